"""i8042 keyboard controller driven directly: controller commands, the
keyboard, the empty AUX port, IRQ1/IRQ12 and restart from state."""

from __future__ import annotations

import msgpack

from wiring import RecordingLine as Line

from bhive.actors import i8042 as kbc


def make(**kw):
    kbd, aux = Line(), Line()
    return kbc.I8042(kbd_irq=kbd, aux_irq=aux, **kw), kbd, aux


def cmd(dev, value, *data):
    dev.write(kbc.COMMAND, 1, value)
    for d in data:
        dev.write(kbc.DATA, 1, d)


def drain(dev):
    """(status, byte) for every byte in the output buffer, as a polling driver reads them."""
    out = []
    while dev.read(kbc.COMMAND, 1) & kbc.STS_OBF:
        status = dev.read(kbc.COMMAND, 1)
        out.append((status & (kbc.STS_AUX | kbc.STS_TIMEOUT), dev.read(kbc.DATA, 1)))
    return out


def set_cb(dev, value):
    cmd(dev, kbc.CMD_WRITE_CB, value)


def test_reset_values_self_test_and_reset_line():
    resets = []
    dev = kbc.I8042(reset=lambda: resets.append(1))
    assert dev.read(kbc.COMMAND, 1) & kbc.STS_OBF == 0
    dev.write(kbc.COMMAND, 1, kbc.CMD_READ_CB)
    assert dev.read(kbc.COMMAND, 1) & kbc.STS_OBF
    assert dev.read(kbc.DATA, 1) == kbc.CB_RESET
    dev.write(kbc.COMMAND, 1, kbc.CMD_SELF_TEST)
    assert dev.read(kbc.DATA, 1) == kbc.SELF_TEST_OK
    dev.write(kbc.DATA, 1, 0xFF)                     # keyboard reset: ACK, BAT passed
    assert [dev.read(kbc.DATA, 1), dev.read(kbc.DATA, 1)] == [kbc.KBD_ACK, kbc.KBD_BAT_OK]
    assert not resets
    dev.write(kbc.COMMAND, 1, 0xFE)
    assert resets == [1]
    dev.write(kbc.COMMAND, 1, kbc.CMD_WRITE_OUTPORT)
    dev.write(kbc.DATA, 1, 0x02)                      # reset line low
    assert resets == [1, 1]
    again = kbc.I8042.from_state(dev.state())
    assert again.state() == dev.state()


def test_irq1_follows_the_output_buffer():
    dev, kbd, aux = make()
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_ENABLE)
    assert kbd.levels == [True]
    assert dev.read(kbc.DATA, 1) == kbc.KBD_ACK
    assert kbd.levels == [True, False] and aux.levels == []


def test_every_byte_of_a_reply_is_a_new_irq1_edge():
    # GET ID's three bytes: Linux reads one per interrupt, and IRQ1 is edge-triggered.
    dev, kbd, aux = make()
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)
    got = [dev.read(kbc.DATA, 1) for _ in range(3)]
    assert got == [kbc.KBD_ACK, 0xAB, 0x41]
    assert kbd.levels == [True, False, True, False, True, False]
    assert kbd.pulses == 3 and aux.levels == []


def test_get_id_is_an_mf2_keyboard_translated_or_not():
    dev, _, _ = make()
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)       # translation on (CB_RESET): AB 83 -> AB 41
    assert drain(dev) == [(0, 0xFA), (0, 0xAB), (0, 0x41)]
    set_cb(dev, kbc.CB_RESET & ~kbc.CB_XLATE)
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)
    assert drain(dev) == [(0, 0xFA), (0, 0xAB), (0, 0x83)]


def test_keyboard_commands_atkbd_sends():
    dev, _, _ = make()
    ack = (0, kbc.KBD_ACK)

    def send(byte):
        dev.write(kbc.DATA, 1, byte)
        return drain(dev)

    assert send(kbc.KBD_CMD_ECHO) == [(0, 0xEE)]
    assert send(kbc.KBD_CMD_SET_LEDS) == [ack]
    assert send(0x07) == [ack] and dev.leds == 7
    assert send(kbc.KBD_CMD_SET_RATE) == [ack]
    assert send(0x00) == [ack]
    assert send(kbc.KBD_CMD_SCANCODE) == [ack]
    assert send(0x00) == [ack, (0, 0x41)]                        # set 2, translated
    assert send(kbc.KBD_CMD_SCANCODE) == [ack]
    assert send(0x03) == [ack] and dev.scan_set == 3
    assert send(kbc.KBD_CMD_SCANCODE) == [ack]
    assert send(0x00) == [ack, (0, 0x3F)]                        # set 3, translated
    set_cb(dev, kbc.CB_RESET & ~kbc.CB_XLATE)
    assert send(kbc.KBD_CMD_SCANCODE) == [ack]
    assert send(0x00) == [ack, (0, 0x03)]
    assert send(kbc.KBD_CMD_SCANCODE) == [ack]
    assert send(0x09) == [(0, kbc.KBD_RESEND)]
    assert send(kbc.KBD_CMD_RESET_DISABLE) == [ack] and not dev.scanning
    assert dev.scan_set == 2 and dev.leds == 0
    assert send(kbc.KBD_CMD_ENABLE) == [ack] and dev.scanning
    assert send(kbc.KBD_CMD_RESET_ENABLE) == [ack]
    assert send(0xF8) == [ack]                                   # set 3: all keys make/break
    assert send(0xFC) == [ack]                                   # set 3: one key's type
    assert send(0x1C) == [ack]
    assert send(kbc.KBD_CMD_RESET) == [ack, (0, kbc.KBD_BAT_OK)]
    assert send(0x42) == [(0, kbc.KBD_RESEND)]                    # not a command


def test_a_new_keyboard_command_drops_the_unread_reply():
    dev, _, _ = make()
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)
    assert dev.read(kbc.DATA, 1) == kbc.KBD_ACK
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_ECHO)         # AB 41 never read
    assert drain(dev) == [(0, kbc.KBD_CMD_ECHO)]


def test_d2_writes_the_output_buffer_as_keyboard_data():
    dev, kbd, aux = make()
    cmd(dev, kbc.CMD_WRITE_KBD_OBUF, 0x1E)
    assert dev.read(kbc.COMMAND, 1) & (kbc.STS_OBF | kbc.STS_AUX) == kbc.STS_OBF
    assert kbd.levels == [True] and aux.levels == []
    assert dev.read(kbc.DATA, 1) == 0x1E
    assert kbd.levels == [True, False]


def test_d3_loopback_is_aux_data_on_irq12():
    dev, kbd, aux = make()
    # Linux's polled loopback (i8042_check_aux): AUX interrupt still off.
    cmd(dev, kbc.CMD_WRITE_AUX_OBUF, 0x5A)
    assert dev.read(kbc.COMMAND, 1) & (kbc.STS_OBF | kbc.STS_AUX) == kbc.STS_OBF | kbc.STS_AUX
    assert aux.levels == [] and kbd.levels == []                      # no IRQ12 without CB_AUX_INT
    assert dev.read(kbc.DATA, 1) == 0x5A
    assert not dev.read(kbc.COMMAND, 1) & (kbc.STS_OBF | kbc.STS_AUX)
    # The IRQ test: AUX enabled with its interrupt, then 0xD3 0xA5.
    set_cb(dev, (kbc.CB_RESET | kbc.CB_AUX_INT) & ~kbc.CB_AUX_DISABLE)
    cmd(dev, kbc.CMD_WRITE_AUX_OBUF, 0xA5)
    assert aux.levels == [True] and kbd.levels == []
    status = dev.read(kbc.COMMAND, 1)
    assert status & kbc.STS_OBF and status & kbc.STS_AUX and not status & kbc.STS_TIMEOUT
    assert dev.read(kbc.DATA, 1) == 0xA5
    assert aux.levels == [True, False]


def test_linux_check_aux_and_mux_probe_sequence():
    """i8042_check_aux() then i8042_set_mux_mode(): a plain loopback, no MUX."""
    dev, kbd, aux = make()
    cmd(dev, kbc.CMD_WRITE_AUX_OBUF, 0x5A)
    assert drain(dev) == [(kbc.STS_AUX, 0x5A)]
    for enable, want in ((kbc.CMD_AUX_DISABLE, kbc.CB_AUX_DISABLE), (kbc.CMD_AUX_ENABLE, 0)):
        cmd(dev, enable)
        cmd(dev, kbc.CMD_READ_CB)
        assert drain(dev)[0][1] & kbc.CB_AUX_DISABLE == want
    for byte in (0xF0, 0x56, 0xA4):                 # the MUX test: 0xA4 comes back, so no MUX
        cmd(dev, kbc.CMD_WRITE_AUX_OBUF, byte)
        assert drain(dev) == [(kbc.STS_AUX, byte)]


def test_aux_bytes_with_no_mouse_fail_at_once():
    dev, kbd, aux = make()
    set_cb(dev, kbc.CB_RESET | kbc.CB_AUX_INT | kbc.CB_AUX_DISABLE)
    cmd(dev, kbc.CMD_WRITE_AUX, 0xF2)               # psmouse/atkbd GET ID on the AUX port
    status = dev.read(kbc.COMMAND, 1)
    assert status & (kbc.STS_OBF | kbc.STS_AUX | kbc.STS_TIMEOUT) == \
        kbc.STS_OBF | kbc.STS_AUX | kbc.STS_TIMEOUT
    assert aux.levels == [True] and kbd.levels == []
    assert dev.read(kbc.DATA, 1) == kbc.AUX_NO_DEVICE
    assert aux.levels == [True, False]
    assert not dev.command_byte & kbc.CB_AUX_DISABLE          # sending enabled the interface
    assert not dev.read(kbc.COMMAND, 1) & (kbc.STS_OBF | kbc.STS_TIMEOUT)


def test_keyboard_bytes_wait_while_the_interface_is_disabled():
    dev, kbd, aux = make()
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)
    cmd(dev, kbc.CMD_KBD_DISABLE)
    assert not dev.read(kbc.COMMAND, 1) & kbc.STS_OBF and kbd.levels == [True, False]
    cmd(dev, kbc.CMD_READ_CB)                       # the controller's own reply still comes
    assert drain(dev) == [(0, kbc.CB_RESET | kbc.CB_KBD_DISABLE)]
    cmd(dev, kbc.CMD_KBD_ENABLE)
    assert drain(dev) == [(0, 0xFA), (0, 0xAB), (0, 0x41)]


def test_irq_lines_switch_with_the_side_of_the_next_byte():
    dev, kbd, aux = make()
    set_cb(dev, kbc.CB_RESET | kbc.CB_AUX_INT)
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_ECHO)
    cmd(dev, kbc.CMD_WRITE_AUX_OBUF, 0x11)
    assert (kbd.levels, aux.levels) == ([True], [])
    assert dev.read(kbc.DATA, 1) == kbc.KBD_CMD_ECHO
    assert (kbd.levels, aux.levels) == ([True, False], [True])
    assert dev.read(kbc.DATA, 1) == 0x11
    assert (kbd.levels, aux.levels) == ([True, False], [True, False])


def test_state_round_trip_keeps_each_byte_side():
    def fill(dev):
        set_cb(dev, kbc.CB_RESET | kbc.CB_AUX_INT)
        dev.write(kbc.DATA, 1, kbc.KBD_CMD_GET_ID)            # keyboard: FA AB 41
        cmd(dev, kbc.CMD_WRITE_AUX_OBUF, 0x5A)                 # AUX
        cmd(dev, kbc.CMD_WRITE_AUX, 0xF4)                      # AUX, timeout
        cmd(dev, kbc.CMD_WRITE_KBD_OBUF, 0x33)                 # keyboard side
        assert dev.read(kbc.DATA, 1) == kbc.KBD_ACK

    dev, _, _ = make()
    fill(dev)
    wire = msgpack.unpackb(msgpack.packb(dev.state()))      # as the runtime commits it
    kbd, aux = Line(), Line()
    again = kbc.I8042.from_state(wire, kbd_irq=kbd, aux_irq=aux)
    assert again.state() == dev.state()
    want = [(0, 0xAB), (0, 0x41), (kbc.STS_AUX, 0x5A), (kbc.STS_AUX | kbc.STS_TIMEOUT, 0xFE), (0, 0x33)]
    assert drain(again) == want
    # The restored model knows IRQ1 was high: the first read lowers it, the AUX bytes raise IRQ12.
    assert kbd.levels[0] is False and aux.levels[:2] == [True, False]
    assert drain(dev) == want
    # A keyboard command waiting for its parameter survives too.
    dev.write(kbc.DATA, 1, kbc.KBD_CMD_SET_LEDS)
    drain(dev)
    again = kbc.I8042.from_state(msgpack.unpackb(msgpack.packb(dev.state())))
    again.write(kbc.DATA, 1, 0x02)
    assert drain(again) == [(0, kbc.KBD_ACK)] and again.leds == 2


def test_unknown_controller_command_is_logged():
    events = []
    dev, _, _ = make(log=lambda event, **f: events.append((event, f)))
    for c in (kbc.CMD_WRITE_KBD_OBUF, kbc.CMD_WRITE_AUX_OBUF, kbc.CMD_WRITE_AUX, kbc.CMD_READ_INPORT,
              kbc.CMD_ENABLE_A20, kbc.CMD_DISABLE_A20):
        cmd(dev, c)
    assert events == []
    cmd(dev, 0xA1)
    assert events == [("i8042_unknown_command", {"command": 0xA1})]
