// Host-side stand-in for the Arduino core, just enough to run ina219_bridge.ino under Linux:
// micros() from CLOCK_MONOTONIC (wrapping at 2^32 like the real one), Serial on stdin/stdout
// (non-blocking; the process exits when the serial line goes away).
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

inline uint32_t micros() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint32_t)((uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL);
}

inline void delayMicroseconds(uint32_t us) {
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
  nanosleep(&ts, 0);
}

class HostSerial {
 public:
  void begin(unsigned long) {
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  }
  int available() {
    if (pos_ < len_) return (int)(len_ - pos_);
    ssize_t n = ::read(0, buf_, sizeof(buf_));
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) exit(0);  // line gone
    pos_ = 0;
    len_ = n > 0 ? (size_t)n : 0;
    return (int)len_;
  }
  int read() { return available() > 0 ? buf_[pos_++] : -1; }
  size_t write(const uint8_t* p, size_t n) {
    ssize_t w = ::write(1, p, n);  // drops when the host does not read, like USB CDC
    return w > 0 ? (size_t)w : 0;
  }

 private:
  uint8_t buf_[256];
  size_t pos_ = 0, len_ = 0;
};

extern HostSerial Serial;
