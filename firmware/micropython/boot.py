# boot.py: MicroPython runs it at every reset, before main.py (and after mpremote's soft reset).
# It joins Wi-Fi as config.json's board.wifi_ssid says, waiting a bounded time; the logic is in
# tinymta/board_rt.py.  A failure here is printed and never keeps the REPL from coming up.
try:
    from tinymta import board_rt
    board_rt.boot()
except Exception as e:
    import sys
    print("boot.py: Wi-Fi setup failed:")
    sys.print_exception(e)
