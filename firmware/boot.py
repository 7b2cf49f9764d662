# /boot.py on a board: runs before /main.py after every reset.
# Kept empty of work on purpose: networking and the node runtime start in main.py,
# so a broken node.json or firmware file still leaves a working REPL for mpremote.
# Wi-Fi, watchdog and NTP are started by firmware.core.main() once node.json has
# been checked (hal.begin); on every platform this file only collects garbage.
import gc

gc.collect()
