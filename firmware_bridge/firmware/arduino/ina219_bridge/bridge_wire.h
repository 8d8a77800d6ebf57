// Frame encoding of the CarbonCP INA219 bridge (see firmware_bridge/PROTOCOL.md), C++11.
// The same bytes as firmware/bridge_wire.py and the host's protocol.py; a test compiles this
// header on the host and compares its frames with Python's.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace bridge {

const uint8_t PROTOCOL_VERSION = 1;
const uint8_t FW_MAJOR = 0;
const uint8_t FW_MINOR = 1;
const size_t MAX_FRAME = 96;             // decoded bytes
const size_t MAX_WIRE = MAX_FRAME + 4;   // COBS overhead + delimiter
static const char DEVICE_NAME[] = "carboncp-ina219";

enum : uint8_t { T_SAMPLE = 0x01, T_IDENTITY = 0x02, T_ACK = 0x03, T_ERROR = 0x04 };
enum : uint8_t { C_IDENTIFY = 0x10, C_START = 0x11, C_STOP = 0x12, C_SET_RATE = 0x13, C_SET_CAL = 0x14 };
enum : uint8_t { E_BAD_FRAME = 1, E_UNKNOWN = 2, E_BAD_ARG = 3, E_I2C = 4, E_VERSION = 5 };
enum : uint8_t { F_OVF = 0x01, F_STALE = 0x02, F_LATE = 0x04 };

// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no xor-out.
inline uint16_t crc16(const uint8_t* d, size_t n, uint16_t crc = 0xFFFF) {
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)((uint16_t)d[i] << 8);
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

// COBS-encodes n bytes into out (room for n + n/254 + 2) and appends the 0x00 delimiter.
inline size_t cobs_encode(const uint8_t* in, size_t n, uint8_t* out) {
  size_t code_at = 0, j = 1;
  uint8_t code = 1;
  for (size_t i = 0; i < n; i++) {
    if (in[i] == 0) {
      out[code_at] = code;
      code_at = j++;
      code = 1;
    } else {
      out[j++] = in[i];
      if (++code == 0xFF) {
        out[code_at] = code;
        code_at = j++;
        code = 1;
      }
    }
  }
  out[code_at] = code;
  out[j++] = 0;
  return j;
}

// Decodes one COBS block (no delimiter); returns the decoded length or -1 when malformed.
inline int cobs_decode(const uint8_t* in, size_t n, uint8_t* out, size_t cap) {
  size_t i = 0, j = 0;
  while (i < n) {
    uint8_t code = in[i];
    if (code == 0 || i + code > n) return -1;
    for (size_t k = i + 1; k < i + code; k++) {
      if (in[k] == 0 || j >= cap) return -1;
      out[j++] = in[k];
    }
    i += code;
    if (code != 0xFF && i < n) {
      if (j >= cap) return -1;
      out[j++] = 0;
    }
  }
  return (int)j;
}

// Little-endian body builder: type | payload; finish() appends the CRC and COBS-encodes.
struct Body {
  uint8_t buf[MAX_FRAME];
  size_t n;
  explicit Body(uint8_t type) : n(0) { u8(type); }
  void u8(uint8_t v) { if (n < MAX_FRAME - 2) buf[n++] = v; }
  void u16(uint16_t v) { u8(v & 0xFF); u8(v >> 8); }
  void u32(uint32_t v) { u16(v & 0xFFFF); u16(v >> 16); }
  void i32(int32_t v) { u32((uint32_t)v); }
  void bytes(const void* p, size_t k) { for (size_t i = 0; i < k; i++) u8(((const uint8_t*)p)[i]); }
  size_t finish(uint8_t* out) {
    uint16_t crc = crc16(buf, n);
    buf[n++] = crc >> 8;
    buf[n++] = crc & 0xFF;
    return cobs_encode(buf, n, out);
  }
};

inline size_t sample_frame(uint8_t* out, uint16_t seq, uint32_t mcu_us, uint16_t bus_mv,
                           int32_t current_ua, uint32_t power_uw, uint8_t flags) {
  Body b(T_SAMPLE);
  b.u16(seq); b.u32(mcu_us); b.u16(bus_mv); b.i32(current_ua); b.u32(power_uw); b.u8(flags);
  return b.finish(out);
}

inline size_t ack_frame(uint8_t* out, uint8_t token, uint8_t cmd, const uint8_t* extra = 0,
                        size_t extra_n = 0) {
  Body b(T_ACK);
  b.u8(token); b.u8(cmd); b.bytes(extra, extra_n);
  return b.finish(out);
}

inline size_t error_frame(uint8_t* out, uint8_t token, uint8_t cmd, uint8_t code, const char* detail) {
  Body b(T_ERROR);
  b.u8(token); b.u8(cmd); b.u8(code);
  size_t k = strlen(detail);
  b.bytes(detail, k > 48 ? 48 : k);
  return b.finish(out);
}

struct Identity {
  uint8_t token, tick_period_log2, streaming;
  uint16_t rate_hz, max_rate_hz, cal, config;
  uint32_t shunt_uohm, max_current_ua, current_lsb_pa, overruns, i2c_errors, rx_bad;
  uint16_t session;
};

inline size_t identity_frame(uint8_t* out, const Identity& d) {
  Body b(T_IDENTITY);
  b.u8(d.token); b.u8(PROTOCOL_VERSION); b.u8(FW_MAJOR); b.u8(FW_MINOR);
  b.u8(d.tick_period_log2); b.u8(d.streaming ? 1 : 0);
  b.u16(d.rate_hz); b.u16(d.max_rate_hz);
  b.u32(d.shunt_uohm); b.u32(d.max_current_ua);
  b.u16(d.cal); b.u32(d.current_lsb_pa); b.u16(d.config);
  b.u32(d.overruns); b.u32(d.i2c_errors); b.u32(d.rx_bad); b.u16(d.session);
  b.bytes(DEVICE_NAME, sizeof(DEVICE_NAME) - 1);
  return b.finish(out);
}

// --- INA219 calibration (datasheet 8.5.1), integer maths identical to ina219.py ---------
struct Calibration {
  uint16_t cal;
  uint32_t current_lsb_pa;
};

// lsb_pa = 0: Current_LSB = max/2^15. Returns false when Cal does not fit 16 bits.
inline bool calibration(uint32_t shunt_uohm, uint32_t max_current_ua, uint32_t lsb_pa, Calibration& c) {
  if (shunt_uohm == 0 || max_current_ua == 0) return false;
  uint64_t cal = lsb_pa ? 40960000000000000ULL / ((uint64_t)lsb_pa * shunt_uohm)
                        : (4096ULL * 32768ULL * 10000000ULL) / ((uint64_t)max_current_ua * shunt_uohm);
  if (cal > 0xFFFE) return false;
  cal &= 0xFFFE;
  if (cal < 2) return false;
  c.cal = (uint16_t)cal;
  c.current_lsb_pa = (uint32_t)(40960000000000000ULL / (cal * shunt_uohm));
  return true;
}

// Python's floor division, so negative currents round the same way on both firmwares.
inline int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
  return q;
}

}  // namespace bridge
