# /main.py on a board (and `micropython main.py` in a node's flash folder on unix):
# start the Starling node runtime from /node.json (core.main() runs the UDP node of
# firmware/node.py, or the serial-chain node of firmware/chain.py when "transport" is
# "serial", and imports only that one) with the HAL of this platform: sys.platform
# "esp32" -> firmware/hal_esp32.py, "rp2" -> hal_pico.py, otherwise hal_unix.py
# (core.make_hal). Files on the board:
#   /boot.py  /main.py  /node.json  /protocol/*.py|mpy  /firmware/*.py|mpy
# The epoch file and counters.json are written next to node.json.
from firmware import core

core.main()
