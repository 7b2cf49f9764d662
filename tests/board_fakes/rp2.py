# Fake `rp2` module: the pre-1.20 home of the Wi-Fi country code and the BOOTSEL
# button. Not modelled: PIO, DMA, Flash.
country_code = ""
bootsel = 0


def configure():
    global country_code, bootsel
    country_code = ""
    bootsel = 0


def country(code=None):
    global country_code
    if code is None:
        return country_code
    country_code = code


def bootsel_button():
    return bootsel
