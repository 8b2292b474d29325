"""``linetap provision-agent``: serve the provisioning protocol on the USB serial gadget.

The Pi's USB-C port runs as a CDC ACM gadget (dwc2 + g_serial), which shows up on the
box as ``/dev/ttyGS0`` and on the engineer's laptop as a serial port with USB id
0525:a4a7. systemd starts this agent when ``ttyGS0`` appears; it completes any apply
cut short by a power cut, answers frames at once, and meanwhile watches the pause
button (physical presence); it tells systemd it is ready when the button check ends.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from provisioning import presence as presence_mod
from provisioning import protocol
from provisioning.dispatcher import AgentEnv, Dispatcher, _systemctl, start_recorder_unit
from recorder import config as rconfig
from recorder.errors import ConfigError, LinetapError
from recorder.runtime import control_client, ledmode
from recorder.runtime.sdnotify import SdNotifier

log = logging.getLogger(__name__)

DEFAULT_PORT = "/dev/ttyGS0"
READ_TIMEOUT_S = 0.2
FRAME_TIMEOUT_S = 2.0


class Agent:
    """Reads frames from ``stream`` and writes one reply per event.

    ``stream`` is an open pyserial port (anything with ``read(n)``, ``write(b)``,
    ``flush()``, ``in_waiting`` and a read ``timeout`` of about ``READ_TIMEOUT_S``).
    A partial frame that gets no new byte for ``frame_timeout_s`` seconds is dropped
    and answered with an error, so a cable pulled mid-frame cannot wedge the parser.
    """

    def __init__(self, stream, dispatcher: Dispatcher, *, stop: threading.Event | None = None,
                 frame_timeout_s: float = FRAME_TIMEOUT_S, notifier: SdNotifier | None = None,
                 monotonic=time.monotonic):
        self.stream = stream
        self.dispatcher = dispatcher
        self.stop = stop or threading.Event()
        self.frame_timeout_s = frame_timeout_s
        self.notifier = notifier or SdNotifier({})
        self.parser = protocol.FrameParser()
        self.frames_answered = 0
        self._monotonic = monotonic

    def step(self, data: bytes) -> None:
        """Feed ``data`` and answer every event it completes (also used by tests)."""
        for event in self.parser.feed(data):
            self._answer(event)

    def _answer(self, event) -> None:
        reply = self.dispatcher.handle_event(event)
        self.stream.write(reply)
        self.stream.flush()
        self.frames_answered += 1
        action = self.dispatcher.pop_after_reply()
        if action is not None:
            log.info("running post-reply action %s", getattr(action, "__name__", action))
            action()

    def serve(self) -> None:
        """Answer frames until ``stop`` is set. Serial errors propagate to the caller."""
        last_byte = self._monotonic()
        interval = self.notifier.watchdog_interval_s()
        last_ping = 0.0
        # The blocking read with a short timeout is this loop's wait: checking the stop
        # Event between reads keeps shutdown prompt without busy-waiting.
        while not self.stop.is_set():
            data = self.stream.read(max(1, self.stream.in_waiting))
            now = self._monotonic()
            try:
                if data:
                    last_byte = now
                    self.step(data)
                elif self.parser.pending and now - last_byte > self.frame_timeout_s:
                    for event in self.parser.reset():
                        self._answer(event)
            except OSError:
                raise
            except Exception:  # noqa: BLE001 - keep serving; the dispatcher already answers
                log.exception("provisioning agent: unexpected error handling input")
            if interval and now - last_ping > interval / 2:
                self.notifier.watchdog()
                last_ping = now


PRODUCTION_MARKER = Path("/usr/lib/linetap/production-image")
"""Installed by firmware/install.sh into every image (read-only root): its presence makes
``--presence granted|denied`` refuse to start, so the bench switch cannot open the
window on a production box."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linetap provision-agent",
                                description="Serve the provisioning protocol on USB serial.")
    p.add_argument("--port", default=DEFAULT_PORT, help="serial device (default %(default)s)")
    p.add_argument("--config", default=str(rconfig.DEFAULT_PATH),
                   help="box config file (default %(default)s)")
    p.add_argument("--data-dir", help="data folder (default: device.data_dir from the config)")
    p.add_argument("--presence-timeout-min", type=float, default=30.0,
                   help="how long provisioning mode lasts, minutes (default %(default)s)")
    p.add_argument("--presence-window-s", type=float, default=presence_mod.DEFAULT_WINDOW_S,
                   help="how long after start the button may be pressed, seconds "
                        "(default %(default)s)")
    p.add_argument("--hold-s", type=float, default=presence_mod.DEFAULT_HOLD_S,
                   help="how long the button must be held, seconds (default %(default)s)")
    p.add_argument("--presence", choices=("button", "granted", "denied"), default="button",
                   help="'button' reads the pause button (the Pi); 'granted'/'denied' are "
                        "for the bench and refused on a production image")
    p.add_argument("--recorder-unit", default="linetap-recorder.service",
                   help="systemd unit started after apply and stopped before a reset; '' "
                        "on a bench without a recorder (refused on a production image)")
    return p


def cli_main(argv: list[str]) -> int:
    # `linetap provision-agent -- --port X`: drop a leading "--".
    args = build_parser().parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    bench = [f"--presence {args.presence}"] if args.presence != "button" else []
    bench += ["--recorder-unit ''"] if not args.recorder_unit else []
    if bench and PRODUCTION_MARKER.exists():
        print(f"linetap provision-agent: {', '.join(bench)} is for the bench only; this is "
              f"a production image ({PRODUCTION_MARKER} exists)", file=sys.stderr)
        return 2
    import serial  # pyserial; imported here so the dispatcher imports without it

    config_path = Path(args.config)
    try:
        cfg = rconfig.load(config_path, missing_ok=True)
    except ConfigError as exc:
        # A broken config must not lock the engineer out: serve with defaults so a
        # good config can be pushed.
        log.warning("config invalid, serving with defaults: %s", exc)
        cfg = rconfig.Config()
    data_dir = Path(args.data_dir or cfg.device.data_dir)
    leds: list = []

    def on_change(p):
        ledmode.publish(data_dir, p)
        for led in leds:
            led.show(p)

    pres = presence_mod.Presence(False, args.presence_timeout_min * 60.0, hold_s=args.hold_s,
                                 window_s=args.presence_window_s, on_change=on_change)
    unit = args.recorder_unit
    if unit:
        recorder_fns = {"restart_recorder": lambda: start_recorder_unit(unit),
                        "stop_recorder": lambda: _systemctl("stop", unit)}
    else:
        recorder_fns = {"restart_recorder": lambda: {"active": "not managed (bench)",
                                                     "managed": False},
                        "stop_recorder": lambda: None}
    dispatcher = Dispatcher(AgentEnv(config_path=config_path, data_dir=data_dir,
                                     presence=pres, **recorder_fns))
    # Complete an apply cut short by a power cut before anything reads the config.
    try:
        log.info("apply recovery: %s", dispatcher.recover())
    except LinetapError as exc:
        log.error("apply recovery failed: %s (doctor and status report it)", exc)
    notifier = SdNotifier()
    stop = threading.Event()
    # SIGTERM (systemd) and SIGINT end the serving loop through ``stop``: the loop checks
    # it between short reads, so the agent stops within a read timeout, wherever it is,
    # and still closes the presence window and tells systemd.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def own_led(owner: str) -> None:
        # The recorder, when it reads the button for us, also shows the LED (from the
        # marker ledmode.publish writes); with the recorder down the agent drives it.
        if owner != "gpio":
            return
        try:
            leds.append(ledmode.AgentLed(cfg.pins.status_led))
            leds[0].show(pres)      # lit steadily: waiting for the press
        except Exception as exc:  # noqa: BLE001 - no LED must not block provisioning
            log.warning("status LED unavailable: %s", exc)

    def check_presence():
        # Runs beside the serving loop, so `hello` is answered while the box waits for
        # the press. The recorder does not wait for it: while the recorder runs, the
        # button is read through its control socket (provisioning/presence.py).
        if args.presence == "button":
            presence_mod.check_button(pres, cfg.pins.pause_button,
                                      active_low=cfg.pins.active_low,
                                      recorder_socket=control_client.socket_path(data_dir),
                                      on_open=own_led)
            for led in leds:
                led.close()
            leds.clear()
        elif args.presence == "granted":
            pres.grant()
        else:
            pres.deny("presence denied (bench)")
        notifier.ready("provisioning mode" if pres.active() else "read-only")

    if args.presence == "button":
        pres.waiting()      # before serving: the first hello already says so
    threading.Thread(target=check_presence, name="presence", daemon=True).start()
    try:
        while not stop.is_set():
            try:
                with serial.Serial(args.port, 115200, timeout=READ_TIMEOUT_S) as port:
                    log.info("provisioning agent serving on %s", args.port)
                    Agent(port, dispatcher, stop=stop, notifier=notifier).serve()
            except (serial.SerialException, OSError):
                log.exception("serial port %s failed; reopening", args.port)
                stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        pres.end("agent stopped")
        notifier.stopping()
    return 0
