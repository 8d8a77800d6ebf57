// Host-side stand-in for Wire with a fixed-load INA219 register model behind it
// (shunt 80.00 mV, bus 5.100 V; Current = Shunt*Cal/4096, Power = Current*Bus/5000).
#pragma once
#include <stdint.h>

const int16_t MOCK_SHUNT_RAW = 8000;  // 10 uV units
const uint16_t MOCK_BUS_RAW = 1275;   // 4 mV units

class MockWire {
 public:
  uint16_t regs[6] = {0x399F, 0, 0, 0, 0, 0};
  void begin() {}
  void setClock(uint32_t) {}
  void beginTransmission(uint8_t addr) { addr_ = addr; n_ = 0; }
  size_t write(uint8_t b) { if (n_ < 3) tx_[n_++] = b; return 1; }
  uint8_t endTransmission(bool = true) {
    if (addr_ != 0x40) return 2;  // NACK on address
    if (n_ >= 1) ptr_ = tx_[0] % 6;
    if (n_ == 3 && (ptr_ == 0 || ptr_ == 5))
      regs[ptr_] = (uint16_t)((tx_[1] << 8) | tx_[2]) & (ptr_ == 5 ? 0xFFFE : 0xFFFF);
    return 0;
  }
  uint8_t requestFrom(uint8_t addr, uint8_t n) {
    if (addr != 0x40 || n != 2) return 0;
    uint16_t v = value(ptr_);
    rx_[0] = v >> 8; rx_[1] = v & 0xFF; rpos_ = 0;
    return 2;
  }
  int read() { return rpos_ < 2 ? rx_[rpos_++] : -1; }

 private:
  uint16_t value(uint8_t reg) {
    int32_t current = (int32_t)MOCK_SHUNT_RAW * regs[5] / 4096;
    switch (reg) {
      case 1: return (uint16_t)MOCK_SHUNT_RAW;
      case 2: return (uint16_t)((MOCK_BUS_RAW << 3) | 2);  // CNVR set
      case 3: return (uint16_t)(current * MOCK_BUS_RAW / 5000);
      case 4: return (uint16_t)current;
      default: return regs[reg];
    }
  }
  uint8_t addr_ = 0, ptr_ = 0, n_ = 0, tx_[3] = {0}, rx_[2] = {0}, rpos_ = 0;
};

extern MockWire Wire;
