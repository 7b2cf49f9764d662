# /boot.py on a board: runs before /main.py after every reset.
# Kept empty of work on purpose: networking and the node runtime start in main.py,
# so a broken node.json or firmware file still leaves a working REPL for mpremote.
# Board HALs (ESP32, Pico W; Wi-Fi association from node.json "wifi") come with
# their own issue; on the unix port this file does nothing.
import gc

gc.collect()
