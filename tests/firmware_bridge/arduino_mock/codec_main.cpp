// Prints the C++ codec's frames for commands read from stdin, for comparison with Python:
//   sample SEQ MCU_US BUS_MV CURRENT_UA POWER_UW FLAGS   -> hex of the wire frame
//   cal SHUNT_UOHM MAX_UA LSB_PA                          -> "CAL LSB_PA" or "error"
//   cobs HEX                                              -> hex of the encoded block
#include <stdio.h>
#include <string.h>

#include "bridge_wire.h"

static void hex(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
  printf("\n");
}

int main() {
  char cmd[16];
  while (scanf("%15s", cmd) == 1) {
    if (!strcmp(cmd, "sample")) {
      unsigned seq, mv, flags; unsigned long mcu, uw; long ua;
      scanf("%u %lu %u %ld %lu %u", &seq, &mcu, &mv, &ua, &uw, &flags);
      uint8_t out[bridge::MAX_WIRE];
      hex(out, bridge::sample_frame(out, seq, mcu, mv, ua, uw, flags));
    } else if (!strcmp(cmd, "cal")) {
      unsigned long shunt, max_ua, lsb; bridge::Calibration c;
      scanf("%lu %lu %lu", &shunt, &max_ua, &lsb);
      if (bridge::calibration(shunt, max_ua, lsb, c)) printf("%u %lu\n", c.cal, (unsigned long)c.current_lsb_pa);
      else printf("error\n");
    } else if (!strcmp(cmd, "cobs")) {
      char h[2048]; uint8_t in[1024], out[1100];
      scanf("%2047s", h);
      size_t n = strlen(h) / 2;
      for (size_t i = 0; i < n; i++) sscanf(h + 2 * i, "%2hhx", &in[i]);
      if (!strcmp(h, "-")) n = 0;
      hex(out, bridge::cobs_encode(in, n, out));
    }
    fflush(stdout);
  }
  return 0;
}
