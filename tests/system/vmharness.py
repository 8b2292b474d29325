"""Boot the Linetap image under QEMU and talk to it (imported by test_boot.py).

The disk is the image firmware/build-image.sh made, copied, plus a test layer written
into root slot A of the copy with debugfs (a root shell on ttyS1, the unit loading
gpio-sim and snd-aloop, gpio-sim.ko, a Pi revision for gpiozero) and a seeded data
partition (the box config and the practice public key, owned by the fixed uid 700).
The kernel and initrd are the image's; the command line is boot slot A's cmdline.txt,
as the Pi firmware would pass it. No network device: the box must record without one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VMFILES = HERE / "vm"
LINETAP_UID = 700


def sfdisk_parts(img: Path) -> list[dict]:
    dump = subprocess.run(["sfdisk", "--dump", str(img)], capture_output=True, text=True,
                          check=True).stdout
    return [{"start": int(m.group(1)), "size": int(m.group(2)), "name": m.group(3)}
            for m in re.finditer(r"start=\s*(\d+), size=\s*(\d+),.*?name=\"([^\"]*)\"", dump)]


def read_part(img: Path, part: dict, dest: Path) -> Path:
    subprocess.run(["dd", f"if={img}", f"of={dest}", "bs=512", f"skip={part['start']}",
                    f"count={part['size']}", "status=none", "conv=sparse"], check=True)
    return dest


def write_part(img: Path, part: dict, src: Path) -> None:
    subprocess.run(["dd", f"if={src}", f"of={img}", "bs=512", f"seek={part['start']}",
                    "status=none", "conv=notrunc,sparse"], check=True)


def debugfs(ext: Path, commands: list[str]) -> None:
    r = subprocess.run(["debugfs", "-w", "-f", "-", str(ext)], input="\n".join(commands) + "\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"debugfs failed: {r.stderr}")


class Disk:
    """A writable copy of the image with the test layer and a seeded data partition."""

    def __init__(self, image_dir: Path, work: Path):
        self.image_dir, self.work = image_dir, work
        self.path = work / "disk.img"

    def prepare(self, config_toml: str, practice_pub: bytes, gpio_sim_ko: Path) -> None:
        subprocess.run(["cp", "--sparse=always", str(self.image_dir / "disk.img"),
                        str(self.path)], check=True)
        parts = {p["name"]: p for p in sfdisk_parts(self.path)}
        self.parts = parts
        # Root slot A: the test layer.
        root = read_part(self.path, parts["linetap-root-a"], self.work / "root-a.ext4")
        stage = self.work / "layer"
        stage.mkdir(exist_ok=True)
        tools = ("linetap-test-hw", "linetap-test-shell", "cpuinfo")
        for f in tools:
            shutil.copy(VMFILES / f, stage / f)
        shutil.copy(gpio_sim_ko, stage / "gpio-sim.ko")
        cmds = ["mkdir /usr/local/lib/linetap-test",
                "mkdir /etc/systemd/system/sysinit.target.wants",
                "mkdir /etc/systemd/system/linetap-recorder.service.d"]
        for f in (*tools, "gpio-sim.ko"):
            cmds.append(f"write {stage / f} /usr/local/lib/linetap-test/{f}")
        for f in ("linetap-test-hw", "linetap-test-shell"):
            cmds.append(f"sif /usr/local/lib/linetap-test/{f} mode 0100755")
        # The clock test's boot has a NIC (and nothing beyond the host's NTP server):
        # networkd gives it a static address, timesyncd asks only that server.
        cmds += ["mkdir /etc/systemd/network",
                 f"write {VMFILES / '50-linetap-test.network'} "
                 "/etc/systemd/network/50-linetap-test.network",
                 f"write {VMFILES / '90-linetap-test-ntp.conf'} "
                 "/etc/systemd/timesyncd.conf.d/90-linetap-test-ntp.conf",
                 "mkdir /etc/systemd/system/multi-user.target.wants",
                 "symlink /etc/systemd/system/multi-user.target.wants/systemd-networkd.service "
                 "/lib/systemd/system/systemd-networkd.service"]
        for unit in ("linetap-test-shell.service", "linetap-test-hw.service"):
            cmds += [f"write {VMFILES / unit} /etc/systemd/system/{unit}",
                     f"symlink /etc/systemd/system/sysinit.target.wants/{unit} "
                     f"/etc/systemd/system/{unit}"]
        cmds.append(f"write {VMFILES / 'recorder-test.conf'} "
                    "/etc/systemd/system/linetap-recorder.service.d/test.conf")
        debugfs(root, cmds)
        write_part(self.path, parts["linetap-root-a"], root)
        root.unlink()
        # Data: the box config as provisioning would leave it.
        data = self.work / "data-seed"
        (data / "config").mkdir(parents=True, exist_ok=True)
        (data / "config" / "linetap.toml").write_text(config_toml)
        (data / "config" / "practice.pub").write_bytes(practice_pub)
        for d in ("keys", "run", "timesync"):
            (data / d).mkdir(exist_ok=True)
        for p in [data, *data.rglob("*")]:
            if p.name != "timesync":
                os.chown(p, LINETAP_UID, LINETAP_UID)
        os.chmod(data, 0o750)
        os.chmod(data / "keys", 0o700)
        size_mib = parts["linetap-data"]["size"] // 2048
        ext = self.work / "data.ext4"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "LTDATA",
                        "-E", f"root_owner={LINETAP_UID}:{LINETAP_UID},lazy_itable_init=0,"
                        "lazy_journal_init=0", "-d", str(data),
                        str(ext), f"{size_mib}M"], check=True)
        write_part(self.path, parts["linetap-data"], ext)
        ext.unlink()

    def forget_saved_clock(self) -> None:
        """Delete timesyncd's clock file from the data partition (power off first), so
        the next boot keeps whatever time the RTC gives it (a wrong one, on purpose)."""
        self.parts = {p["name"]: p for p in sfdisk_parts(self.path)}
        ext = read_part(self.path, self.parts["linetap-data"], self.work / "data-clock.ext4")
        debugfs(ext, ["rm /timesync/clock"])
        write_part(self.path, self.parts["linetap-data"], ext)
        ext.unlink()

    def extract_data(self, dest: Path) -> Path:
        """Copy the data partition's files out (after the VM stopped or was killed)."""
        # Re-read the table: systemd-repart grew the data partition at first boot.
        self.parts = {p["name"]: p for p in sfdisk_parts(self.path)}
        ext = read_part(self.path, self.parts["linetap-data"], self.work / "data-out.ext4")
        fsck = subprocess.run(["e2fsck", "-fy", str(ext)], capture_output=True, text=True)
        if fsck.returncode > 1:                  # 0 clean, 1 fixed (a power cut's journal)
            raise RuntimeError(f"data partition damaged: {fsck.stdout[-2000:]}")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debugfs", "-R", f"rdump / {dest}", str(ext)], capture_output=True,
                       check=True)
        ext.unlink()
        return dest

    def boot_cmdline(self) -> str:
        fat = read_part(self.path, self.parts["linetap-boot-a"], self.work / "boot-a.fat")
        r = subprocess.run(["mtype", "-i", str(fat), "::/cmdline.txt"], capture_output=True,
                           text=True, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        fat.unlink()
        return r.stdout.strip()


SHELL_PORT = "linetap.shell"


def virt_dtb_without_pl061(cmd: list[str], work: Path) -> Path:
    """The device tree QEMU makes for ``cmd`` (-M virt), with the PL061 GPIO controller
    disabled: it would be gpiochip0 and gpio-sim gpiochip1, where the recorder (as on a
    Pi 4) opens gpiochip0. QEMU still adds /chosen (command line, initrd) at boot."""
    dtb = work / "virt.dtb"
    m = cmd.index("-M")
    dump = [*cmd[:m + 1], f"{cmd[m + 1]},dumpdtb={dtb}", *cmd[m + 2:]]
    subprocess.run(dump, check=True, capture_output=True, timeout=60)
    nodes = subprocess.run(["fdtget", "-l", str(dtb), "/"], capture_output=True, text=True,
                           check=True).stdout.split()
    for node in (n for n in nodes if n.startswith("pl061@")):
        subprocess.run(["fdtput", "-t", "s", str(dtb), f"/{node}", "status", "disabled"],
                       check=True)
    return dtb


class NtpServer:
    """A real NTP server (Debian's chronyd) reachable only from the VM: a network
    namespace of our own with nothing but loopback, chronyd on its 127.0.0.1:123
    serving its own clock (``local``; ``-x``: it never touches the host's clock), and
    QEMU started in the same namespace, whose user networking maps the guest's
    10.0.2.2 to that loopback. Nothing in the namespace reaches any other network.

    :meth:`create` makes the namespace; :meth:`serve` starts chronyd (later, so the
    guest can first run unsynchronised); :meth:`close` removes both.
    """

    def __init__(self, work: Path):
        self.work = work
        self.netns = f"ltntp{os.getpid()}"
        self.proc: subprocess.Popen | None = None

    def create(self) -> NtpServer:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        return self

    def serve(self) -> None:
        conf = self.work / "chrony.conf"
        conf.write_text("# system test: serve this host's clock on loopback only\n"
                        "local stratum 8\nallow all\nbindaddress 127.0.0.1\nport 123\n"
                        "cmdport 0\n"
                        f"pidfile {self.work / 'chronyd.pid'}\n")
        # -u root: the unpacked chronyd has no _chrony user to drop to.
        chronyd = os.environ.get("LINETAP_CHRONYD") or shutil.which("chronyd") or "chronyd"
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, chronyd, "-x",
                                      "-u", "root", "-d", "-f", str(conf)],
                                     stdout=open(self.work / "chronyd.log", "wb"),
                                     stderr=subprocess.STDOUT)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "delete", self.netns], check=False)


def kvm_boots_linux(kernel: Path, wait_s: float = 20.0) -> bool:
    """Does this machine's KVM run a Linux kernel? (A nested /dev/kvm can exist and still
    hang every guest right after the real-mode setup, as on the build machine here.)"""
    if not os.access("/dev/kvm", os.W_OK):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serial.log"
        p = subprocess.Popen(["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc",
                              "-m", "256", "-display", "none", "-nic", "none",
                              "-kernel", str(kernel), "-append", "console=ttyS0",
                              "-serial", f"file:{log}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + wait_s
        ok = False
        while time.monotonic() < deadline and p.poll() is None:
            if log.exists() and b"Linux version" in log.read_bytes():
                ok = True
                break
            time.sleep(0.5)
        p.kill()
        p.wait()
        return ok


class VM:
    """One QEMU run of a Disk. ``sh(cmd)`` runs a shell command as root in the guest."""

    def __init__(self, disk: Disk, arch: str = "amd64", memory_mib: int = 1024,
                 kvm: bool = True, *, netns: str | None = None, rtc_base: str | None = None):
        """``netns``: run QEMU in that network namespace and give the guest a NIC on QEMU
        user networking (None: no NIC at all). ``rtc_base``: the guest's RTC at power-on,
        UTC ``YYYY-MM-DDTHH:MM:SS`` (None: the host's time)."""
        self.disk, self.arch, self.memory, self.kvm = disk, arch, memory_mib, kvm
        self.netns, self.rtc_base = netns, rtc_base
        self.sock_path = Path(tempfile.mkdtemp(prefix="ltvm")) / "sh.sock"
        self.console = disk.work / f"console-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._buf = b""

    def start(self) -> float:
        """Start QEMU; returns the host's monotonic time at launch."""
        d = self.disk.image_dir
        cmdline = self.disk.boot_cmdline()
        shell_chardev = ["-chardev", f"socket,id=sh,path={self.sock_path},server=on,wait=off"]
        if self.arch == "amd64":
            qemu = (["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "q35"]
                    if self.kvm else
                    ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
                     "-M", "q35"])
            console = "console=ttyS0"
            shell = [*shell_chardev, "-serial", "chardev:sh"]
        else:
            # The Pi 4's core. -M virt has one UART (the console), so the test shell is
            # on a virtio serial port; its PL061 GPIO controller is disabled in the
            # device tree so that gpio-sim is gpiochip0, as the header is on a Pi.
            qemu = ["qemu-system-aarch64", "-accel", "tcg,thread=multi", "-M", "virt",
                    "-cpu", "cortex-a72"]
            console = f"console=ttyAMA0 linetap.test_shell=/dev/virtio-ports/{SHELL_PORT}"
            shell = [*shell_chardev, "-device", "virtio-serial-pci,id=vs",
                     "-device", f"virtserialport,bus=vs.0,chardev=sh,name={SHELL_PORT}"]
        nic = ["-nic", "user,model=virtio-net-pci"] if self.netns else ["-nic", "none"]
        rtc = ["-rtc", f"base={self.rtc_base}"] if self.rtc_base else []
        cmd = [*qemu, "-m", str(self.memory), "-smp", "2", "-display", "none", *nic, *rtc,
               "-kernel", str(d / "vmlinuz"), "-initrd", str(d / "initrd.img"),
               "-append", f"{cmdline} {console} systemd.show_status=0",
               "-drive", f"file={self.disk.path},if=virtio,format=raw,cache=writeback",
               "-serial", f"file:{self.console}", *shell,
               "-device", "i6300esb", "-action", "watchdog=reset"]
        if self.arch == "arm64":
            cmd += ["-dtb", str(virt_dtb_without_pl061(cmd, self.disk.work))]
            self.sock_path.unlink(missing_ok=True)    # made by the dump run
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.sock_path.exists():
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.05)
        while True:      # the socket file appears a moment before QEMU listens on it
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(self.sock_path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return t0

    def sh(self, cmd: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``cmd`` in the guest's root shell; returns its output (stdout+stderr)."""
        assert self.sock is not None
        tag = f"@@{time.monotonic_ns()}@@"
        self.sock.sendall(f"{{ {cmd} ; }} 2>&1; echo \"{tag}$?\"\n".encode())
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while True:
            m = re.search(re.escape(tag.encode()) + rb"(\d+)\r?\n", self._buf)
            if m:
                out = self._buf[:m.start()].decode(errors="replace")
                self._buf = self._buf[m.end():]
                rc = int(m.group(1))
                if check and rc != 0:
                    raise RuntimeError(f"guest command failed ({rc}): {cmd}\n{out}")
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest command timed out: {cmd}\n{self._buf[-2000:]!r}")
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("guest shell closed")
                self._buf += chunk
            except TimeoutError:
                pass

    def wait_shell(self, timeout: float = 180.0) -> None:
        """Wait for the guest's test shell banner, then for an answer."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        while b"LINETAP-TEST-SHELL-READY" not in self._buf and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("guest shell closed")
                self._buf += chunk
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
        self._buf = b""
        while time.monotonic() < deadline:
            try:
                if "ready" in self.sh("echo ready", timeout=5):
                    return
            except RuntimeError:
                # Line noise from before the shell read the port (a stray "1"): the
                # shell answered, so the next try is clean.
                continue
            except (TimeoutError, ConnectionError):
                self._buf = b""
                if self.proc.poll() is not None:
                    raise RuntimeError("qemu exited during boot: "
                                       + self.proc.stderr.read().decode(errors="replace")
                                       + "\nconsole:\n"
                                       + self.console.read_text(errors="replace")[-4000:]
                                       ) from None
        raise TimeoutError("the guest shell never answered; console:\n"
                           + self.console.read_text(errors="replace")[-4000:])

    def wait_for(self, cmd: str, timeout: float, interval: float = 0.5) -> str:
        """Run ``cmd`` until it succeeds; returns its output."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                return self.sh(cmd, timeout=30)
            except RuntimeError as exc:
                last = str(exc)
            time.sleep(interval)
        raise TimeoutError(f"{cmd} did not succeed within {timeout} s: {last}")

    def kill(self) -> None:
        """Power cut: SIGKILL to QEMU, nothing flushed by the guest."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._close()

    def poweroff(self, timeout: float = 180.0) -> None:
        try:
            self.sh("systemctl --no-block poweroff", timeout=10)
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close()

    def _close(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None
        shutil.rmtree(self.sock_path.parent, ignore_errors=True)
