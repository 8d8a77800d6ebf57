// Runs the sketch's setup()/loop() as a Linux process; serial on stdin/stdout.
#include "Arduino.h"
#include "Wire.h"

HostSerial Serial;
MockWire Wire;

void setup();
void loop();

int main() {
  setup();
  for (;;) loop();
}
