# Fake `esp32` module: the temperature functions. configure(chip): "ESP32" has only
# raw_temperature() (degrees F, the original chip); "ESP32S2" / "ESP32S3" / "ESP32C3"
# have only mcu_temperature() (degC as a float, ESP-IDF 5's calibrated sensor).
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True

chip = "ESP32"
temp_f = 128          # what raw_temperature() returns
temp_c = 41.25        # what mcu_temperature() returns
mcu_temperature = None
raw_temperature = None


def _raw_temperature():
    return temp_f


def _mcu_temperature():
    return temp_c


def configure(c="ESP32"):
    global chip, mcu_temperature, raw_temperature, temp_f, temp_c
    chip = c
    temp_f = 128
    temp_c = 41.25
    if c == "ESP32":
        raw_temperature = _raw_temperature
        mcu_temperature = None
    else:
        raw_temperature = None
        mcu_temperature = _mcu_temperature
