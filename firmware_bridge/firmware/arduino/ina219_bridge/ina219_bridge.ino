// CarbonCP INA219 power-monitor bridge, Arduino (C++) version of firmware/main.py.
// Same protocol (PROTOCOL.md), same behaviour: boot hello, commands, fixed-rate sampling.
// Any board with Wire and a fast Serial (USB CDC boards such as a Pico with arduino-pico,
// SAMD21, ESP32-S2/S3, Teensy). micros() wraps at 2^32, so tick_period_log2 = 32.
// Wiring: INA219 SDA/SCL to the board's I2C pins, VCC 3V3, GND; shunt in the supply line.
#include <Arduino.h>
#include <Wire.h>

#include "bridge_wire.h"

using namespace bridge;

static const uint8_t INA_ADDR = 0x40;
static const uint16_t MAX_RATE_HZ = 2000;
// 16 V bus, +-320 mV shunt, bus ADC 10-bit (148 us), shunt ADC 12-bit (532 us), continuous.
static const uint16_t INA_CONFIG = (0 << 13) | (3 << 11) | (1 << 7) | (3 << 3) | 7;

static uint32_t shunt_uohm = 100000, max_current_ua = 3200000, lsb_override_pa = 0;
static Calibration calib = {0, 0};
static bool configured = false, streaming = false, late = false;
static uint16_t rate_hz = 1000, seq = 0, session = 0;
static uint32_t period_us = 1000, next_due = 0;
static uint32_t overruns = 0, i2c_errors = 0, rx_bad = 0, last_error_us = 0;
static bool error_sent = false;
static uint8_t rx[2 * MAX_FRAME];
static size_t rx_n = 0;
static uint8_t out[MAX_WIRE];

static void send(size_t n) { Serial.write(out, n); }

static bool write_reg(uint8_t reg, uint16_t v) {
  Wire.beginTransmission(INA_ADDR);
  Wire.write(reg);
  Wire.write((uint8_t)(v >> 8));
  Wire.write((uint8_t)(v & 0xFF));
  return Wire.endTransmission() == 0;
}

static bool read_reg(uint8_t reg, uint16_t& v) {
  Wire.beginTransmission(INA_ADDR);
  Wire.write(reg);
  if (Wire.endTransmission() != 0) return false;
  if (Wire.requestFrom(INA_ADDR, (uint8_t)2) != 2) return false;
  uint8_t hi = Wire.read(), lo = Wire.read();
  v = ((uint16_t)hi << 8) | lo;
  return true;
}

static void report_error(uint8_t code, const char* detail) {
  uint32_t now = micros();
  if (!error_sent || (uint32_t)(now - last_error_us) >= 1000000UL) {
    error_sent = true;
    last_error_us = now;
    send(error_frame(out, 0, 0, code, detail));
  }
}

static bool configure() {
  Calibration c;
  if (!calibration(shunt_uohm, max_current_ua, lsb_override_pa, c)) return false;
  if (!write_reg(0x00, INA_CONFIG) || !write_reg(0x05, c.cal)) {
    i2c_errors++;
    report_error(E_I2C, "INA219 not answering at configure");
    return false;
  }
  calib = c;
  configured = true;
  return true;
}

static void send_identity(uint8_t token) {
  Identity d;
  d.token = token; d.tick_period_log2 = 32; d.streaming = streaming;
  d.rate_hz = rate_hz; d.max_rate_hz = MAX_RATE_HZ; d.cal = calib.cal; d.config = INA_CONFIG;
  d.shunt_uohm = shunt_uohm; d.max_current_ua = max_current_ua;
  d.current_lsb_pa = calib.current_lsb_pa;
  d.overruns = overruns; d.i2c_errors = i2c_errors; d.rx_bad = rx_bad; d.session = session;
  send(identity_frame(out, d));
}

static uint32_t le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void handle_block(const uint8_t* block, size_t n) {
  uint8_t body[MAX_FRAME];
  int len = cobs_decode(block, n, body, sizeof(body));
  if (len < 4 || crc16(body, (size_t)len) != 0) {  // type + token + CRC at least
    rx_bad++;
    return;
  }
  uint8_t cmd = body[0], token = body[1];
  const uint8_t* args = body + 2;
  size_t nargs = (size_t)len - 4;
  switch (cmd) {
    case C_IDENTIFY:
      send_identity(token);
      break;
    case C_START:
      if (!configured && !configure()) {
        send(error_frame(out, token, cmd, E_I2C, "INA219 not answering"));
        return;
      }
      streaming = true;
      next_due = micros();
      send(ack_frame(out, token, cmd));
      break;
    case C_STOP:
      streaming = false;
      send(ack_frame(out, token, cmd));
      break;
    case C_SET_RATE: {
      uint16_t r = nargs == 2 ? (uint16_t)(args[0] | (args[1] << 8)) : 0;
      if (r < 1 || r > MAX_RATE_HZ) {
        send(error_frame(out, token, cmd, E_BAD_ARG, nargs == 2 ? "rate out of range" : "rate needs u16"));
        return;
      }
      rate_hz = r;
      period_us = 1000000UL / r;
      next_due = micros();
      send(ack_frame(out, token, cmd, args, 2));
      break;
    }
    case C_SET_CAL: {
      Calibration c;
      if (nargs != 12) {
        send(error_frame(out, token, cmd, E_BAD_ARG, "cal needs 3 x u32"));
        return;
      }
      if (!calibration(le32(args), le32(args + 4), le32(args + 8), c)) {
        send(error_frame(out, token, cmd, E_BAD_ARG, "calibration out of range"));
        return;
      }
      shunt_uohm = le32(args); max_current_ua = le32(args + 4); lsb_override_pa = le32(args + 8);
      if (!configure()) {
        send(error_frame(out, token, cmd, E_I2C, "INA219 not answering"));
        return;
      }
      uint8_t extra[6] = {(uint8_t)(calib.cal & 0xFF), (uint8_t)(calib.cal >> 8),
                          (uint8_t)(calib.current_lsb_pa & 0xFF), (uint8_t)((calib.current_lsb_pa >> 8) & 0xFF),
                          (uint8_t)((calib.current_lsb_pa >> 16) & 0xFF), (uint8_t)(calib.current_lsb_pa >> 24)};
      send(ack_frame(out, token, cmd, extra, 6));
      break;
    }
    default:
      send(error_frame(out, token, cmd, E_UNKNOWN, "unknown command"));
  }
}

static void poll_commands() {
  while (Serial.available() > 0) {
    int c = Serial.read();
    if (c < 0) break;
    if (c == 0) {
      if (rx_n) handle_block(rx, rx_n);
      rx_n = 0;
    } else if (rx_n < sizeof(rx)) {
      rx[rx_n++] = (uint8_t)c;
    } else {  // no delimiter in sight: garbage
      rx_n = 0;
      rx_bad++;
    }
  }
}

static void take_sample(uint32_t now) {
  uint16_t bus, power_raw, current_raw;
  if (!read_reg(0x02, bus) || !read_reg(0x03, power_raw) || !read_reg(0x04, current_raw)) {
    i2c_errors++;
    report_error(E_I2C, "INA219 read failed");
    return;
  }
  uint8_t flags = 0;
  if (bus & 1) flags |= F_OVF;
  if (!(bus & 2)) flags |= F_STALE;
  if (late) { flags |= F_LATE; late = false; }
  uint16_t bus_mv = (uint16_t)((bus >> 3) * 4);
  int32_t current_ua = (int32_t)floordiv((int64_t)(int16_t)current_raw * calib.current_lsb_pa, 1000000);
  int64_t power_uw = floordiv((int64_t)power_raw * 20 * calib.current_lsb_pa, 1000000);
  if (power_uw < 0) power_uw = 0;
  send(sample_frame(out, seq, now, bus_mv, current_ua, (uint32_t)power_uw, flags));
  seq++;
}

void setup() {
  Serial.begin(115200);
  Wire.begin();
  Wire.setClock(400000);
  session = (uint16_t)(micros() ^ (micros() >> 16) ^ 0xA5C3);
  configure();
  send_identity(0);  // unsolicited hello
}

void loop() {
  poll_commands();
  if (!streaming) {
    delayMicroseconds(1000);
    return;
  }
  uint32_t now = micros();
  int32_t wait = (int32_t)(next_due - now);
  if (wait > 0) {
    delayMicroseconds(wait < 1000 ? wait : 1000);
    return;
  }
  uint32_t behind = (uint32_t)(-wait);
  if (behind >= period_us) {  // fell behind: skip the missed ticks, do not burst
    uint32_t skipped = behind / period_us;
    overruns += skipped;
    late = true;
    next_due += (skipped + 1) * period_us;
  } else {
    next_due += period_us;
  }
  take_sample(now);
}
