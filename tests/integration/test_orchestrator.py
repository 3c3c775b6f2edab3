"""
deploy/Containerfile and deploy/kubernetes/ checked as far as this machine
allows, without a container engine or a cluster: the image's command line
and the Deployment's arguments are parsed by twistd's and netecho's own
option parsers (what the container would run), the ports, names and labels
agree between the Containerfile, the Deployment, the Service and the
ServiceMonitor, and the security settings are what deploy/README.md says.
As root, the image's command line runs as the image's user against an
install it cannot write (as under a read-only root file system). Where
kubectl is installed (it is not a test peer), C{kubectl kustomize} renders
the manifests offline. (C{kubectl apply --dry-run=client} would need a
cluster to answer: not tried.)
"""

from __future__ import annotations

import configparser
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from netecho import daemon
from netecho.workers import usable_cpus
from tests import peers
from tests.integration.test_deploy import CommandDaemon, python_for, stream_echo, udp_echo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
CONTAINERFILE = os.path.join(DEPLOY, "Containerfile")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")


def instructions(path: str = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) of a Containerfile: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    with open(path) as f:
        for line in f:
            text = line.strip()
            if not pending and (not text or text.startswith("#")):
                continue
            if text.startswith("#"):  # a comment inside a continued instruction
                continue
            if text.endswith("\\"):
                pending += text[:-1] + " "
                continue
            whole = pending + text
            pending = ""
            word, _, rest = whole.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the Containerfile's last stage (the image that runs)."""
    steps = instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def exec_form(value: str) -> list[str]:
    """An ENTRYPOINT or CMD in exec (JSON) form; the shell form would put /bin/sh first."""
    words = json.loads(value)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), value
    return words


def one(steps, word: str) -> str:
    values = [rest for w, rest in steps if w == word]
    assert len(values) == 1, f"{word}: {values}"
    return values[0]


def parse_twistd(argv: list[str]):
    """
    twistd's own parser on C{argv} (what follows the twistd program): it
    parses netecho's options as the subcommand's, as twistd does at start.
    """
    from twisted.scripts.twistd import ServerOptions

    config = ServerOptions()
    config.parseOptions(argv)
    return config


def listener_values(options) -> dict[str, list[str]]:
    return {name: list(options[name]) for name in ("tcp", "udp", "unix", "random", "pb", "metrics")}


def port_of(value: str) -> int:
    """The port of a listener value: a bare PORT, or an endpoint's first numeric field."""
    if value.isdigit():
        return int(value)
    fields = value.split(":")
    return int(next(f for f in fields[1:] if f.isdigit()))


class ContainerfileTests(SynchronousTestCase):
    def setUp(self):
        # netecho's options name twistd's log when twistd parses them.
        self.patch(daemon, "_twistd_log", None)

    def command(self) -> list[str]:
        steps = final_stage()
        return exec_form(one(steps, "ENTRYPOINT")) + exec_form(one(steps, "CMD"))

    def test_command_line_parses(self):
        """ENTRYPOINT + CMD is a twistd command line twistd and netecho accept."""
        argv = self.command()
        self.assertEqual(argv[0], "/opt/netecho/bin/twistd")
        config = parse_twistd(argv[1:])
        self.assertEqual(config.subCommand, "netecho")
        self.assertTrue(config["nodaemon"])
        self.assertEqual((config["pidfile"], config["logfile"]), ("", "-"))
        options = config.subOptions
        self.assertEqual(options["workers"], usable_cpus())
        self.assertEqual(listener_values(options),
                         {"tcp": ["1234"], "udp": ["1234"], "unix": [], "random": [], "pb": [], "metrics": ["tcp:9101"]})
        # /metrics on every IPv4 address (a bare port would be loopback only: no scraping).
        (metrics,) = [lst for lst in options["listeners"] if lst.option == "metrics"]
        self.assertEqual(metrics.description.split(":backlog=")[0], "tcp:9101")

    def test_exposed_ports_are_the_listeners(self):
        steps = final_stage()
        exposed = set(one(steps, "EXPOSE").split())
        self.assertEqual(exposed, {"1234/tcp", "1234/udp", "9101/tcp"})

    def test_runs_as_a_user_made_in_the_image(self):
        steps = final_stage()
        user = one(steps, "USER")
        uid, _, gid = user.partition(":")
        self.assertTrue(uid.isdigit() and gid.isdigit(), "USER should be numeric (runAsNonRoot checks a number)")
        self.assertNotEqual(int(uid), 0)
        run = " ".join(rest for word, rest in steps if word == "RUN")
        self.assertRegex(run, rf"useradd [^&]*--uid {uid} ")
        self.assertRegex(run, rf"groupadd [^&]*--gid {gid} ")
        # USER comes after everything that needs root.
        words = [word for word, _ in steps]
        self.assertGreater(words.index("USER"), max(i for i, w in enumerate(words) if w == "RUN"))

    def test_plugin_cache_written_at_build(self):
        """The plugin cache is written by the build, after the install, in the image that runs."""
        run = " && ".join(rest for word, rest in final_stage() if word == "RUN")
        commands = [c.strip() for c in run.split("&&")]
        install = next(i for i, c in enumerate(commands) if c.startswith("/opt/netecho/bin/pip install"))
        cache = commands.index("/opt/netecho/bin/netecho plugin-cache")
        self.assertGreater(cache, install)
        self.assertIn("python -m venv /opt/netecho", commands)

    def test_base_is_debian_python(self):
        for word, rest in instructions():
            if word == "FROM":
                self.assertRegex(rest, r"^docker\.io/library/python:3\.\d+-slim-(bookworm|trixie)\b")

    def test_build_context_has_what_the_wheel_needs(self):
        """What the build stage copies holds every package setup.cfg names and every file it reads."""
        copied = []
        for word, rest in instructions():
            if word == "COPY" and not rest.startswith("--from"):
                *sources, _dest = shlex.split(rest)
                copied.extend(sources)
        for source in copied:
            self.assertTrue(os.path.exists(os.path.join(ROOT, source)), source)
        setup = configparser.ConfigParser()
        setup.read(os.path.join(ROOT, "setup.cfg"))
        for package in setup["options"]["packages"].split():
            path = package.replace(".", "/")
            self.assertTrue(any(path == c or path.startswith(c.rstrip("/") + "/") for c in copied), package)
        for key in ("long_description",):
            name = setup["metadata"][key].removeprefix("file:").strip()
            self.assertIn(name, copied)
        for name in setup["metadata"]["license_files"].split():
            self.assertIn(name, copied)
        for name in ("pyproject.toml", "setup.py", "setup.cfg"):
            self.assertIn(name, copied)


#: Where the image's listeners go when its command line runs here: loopback only.
LOOPBACK = {"--tcp": "tcp:0:interface=127.0.0.1", "--udp": "127.0.0.1:0",
            "--metrics": "tcp:0:interface=127.0.0.1"}


class ImageUserTests(TestCase):
    """The image's command line, run here as the image's user."""

    def test_writes_nothing(self):
        """
        ENTRYPOINT + CMD, with the image's ENV, from /, as the image's user
        (USER), against this Python's install, which that user cannot write
        (as a read-only root file system): every service answers, the log
        has no failure to write (the plugin cache included: written first,
        as the Containerfile's build does), the stop is clean and nothing
        of that user's is left in the world-writable directories. Not run:
        a real read-only mount (the user is the only thing that keeps it
        from writing here) and the image itself.
        """
        peers.require_root("running as the image's user")
        setpriv = peers.require("setpriv", "util-linux")
        steps = final_stage()
        uid, _, gid = one(steps, "USER").partition(":")
        user = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        python = python_for(self, user, f"uid {uid}")
        bin_dir = os.path.dirname(python)
        env = {"HOME": "/nonexistent"}
        for word, rest in steps:
            if word == "ENV":
                env.update(pair.split("=", 1) for pair in shlex.split(rest))
        entrypoint = exec_form(one(steps, "ENTRYPOINT"))
        args = exec_form(one(steps, "CMD"))
        args = [LOOPBACK.get(before, arg) for before, arg in zip([""] + args, args)]
        at = entrypoint.index("netecho")
        started = time.time()
        d = CommandDaemon(self, user, *args, twistd_args=tuple(entrypoint[1:at]), env=env, cwd="/",
                          twistd=os.path.join(bin_dir, "twistd"))
        d.start(wait_ready=True)
        tcp = d.port("--tcp " + LOOPBACK["--tcp"])
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", tcp), b"as the image's user\n"),
                         b"as the image's user\n")
        self.assertEqual(udp_echo(d.port("--udp " + LOOPBACK["--udp"]), b"datagram"), b"datagram")
        metrics = d.port("--metrics " + LOOPBACK["--metrics"])
        url = f"http://127.0.0.1:{metrics}/metrics"
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        self.assertIn("netecho_connections_total", page)
        self.assertEqual(d.stop(), -signal.SIGTERM, d.log_text() + d.stderr)
        d.wait_for("summary: ")
        text = d.log_text() + d.stderr
        for bad in ("Unable to write", "Permission denied", "Read-only", "Traceback", "Errno"):
            self.assertNotIn(bad, text)
        left = []
        for where in ("/tmp", "/var/tmp", "/dev/shm"):
            try:
                entries = list(os.scandir(where))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid == int(uid) and st.st_mtime >= started - 1:
                    left.append(entry.path)
        self.assertEqual(left, [])


def load_yaml_all(path: str) -> list[dict]:
    try:
        import yaml
    except ImportError:
        raise SkipTest("PyYAML is not installed (pip install pyyaml) to read the Kubernetes manifests")
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


class KubernetesTests(SynchronousTestCase):
    def setUp(self):
        self.patch(daemon, "_twistd_log", None)
        (self.kustomization,) = load_yaml_all(os.path.join(KUBERNETES, "kustomization.yaml"))
        self.docs = {}
        for name in self.kustomization["resources"]:
            for doc in load_yaml_all(os.path.join(KUBERNETES, name)):
                self.docs[doc["kind"]] = doc
        self.deployment = self.docs["Deployment"]
        self.service = self.docs["Service"]
        self.monitor = self.docs["ServiceMonitor"]
        self.pod = self.deployment["spec"]["template"]
        (self.container,) = self.pod["spec"]["containers"]

    def test_every_file_is_a_resource(self):
        files = sorted(n for n in os.listdir(KUBERNETES) if n.endswith(".yaml") and n != "kustomization.yaml")
        self.assertEqual(sorted(self.kustomization["resources"]), files)
        self.assertEqual(sorted(self.docs), ["Deployment", "Service", "ServiceMonitor"])
        self.assertEqual(self.monitor["apiVersion"], "monitoring.coreos.com/v1")

    def environment(self) -> dict[str, str]:
        """The container's environment as Kubernetes sets it (resourceFieldRef: limits.cpu, divisor 1)."""
        env = {}
        limits = self.container["resources"]["limits"]
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            field = var["valueFrom"]["resourceFieldRef"]
            self.assertEqual((field["resource"], str(field["divisor"])), ("limits.cpu", "1"))
            cpu = str(limits["cpu"])
            cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
            env[var["name"]] = str(math.ceil(cores))  # Kubernetes rounds up to the divisor
        return env

    def args(self) -> list[str]:
        env = self.environment()
        return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in self.container["args"]]

    def test_args_parse(self):
        """The image's ENTRYPOINT with the Deployment's args: a command line twistd and netecho accept."""
        entrypoint = exec_form(one(final_stage(), "ENTRYPOINT"))
        self.assertNotIn("command", self.container)  # the image's ENTRYPOINT runs
        config = parse_twistd(entrypoint[1:] + self.args())
        options = config.subOptions
        self.assertEqual(options["workers"], 2)  # the CPU limit
        self.assertEqual(options["pb"], [])  # no PB: nothing to reach it in a pod
        self.assertTrue(options["metrics"])

    def test_ports_agree(self):
        """Listeners, container ports, Service ports, probes and the ServiceMonitor name the same ports."""
        config = parse_twistd(exec_form(one(final_stage(), "ENTRYPOINT"))[1:] + self.args())
        options = config.subOptions
        ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in self.container["ports"]}
        self.assertEqual(ports["echo-tcp"], (port_of(options["tcp"][0]), "TCP"))
        self.assertEqual(ports["echo-udp"], (port_of(options["udp"][0]), "UDP"))
        self.assertEqual(ports["metrics"], (port_of(options["metrics"][0]), "TCP"))
        exposed = set(one(final_stage(), "EXPOSE").split())
        self.assertEqual({f"{port}/{proto.lower()}" for port, proto in ports.values()}, exposed)
        for p in self.service["spec"]["ports"]:
            self.assertIn(p["targetPort"], ports)
            self.assertEqual(ports[p["targetPort"]][1], p.get("protocol", "TCP"), p)
        service_ports = {p["name"] for p in self.service["spec"]["ports"]}
        (endpoint,) = self.monitor["spec"]["endpoints"]
        self.assertIn(endpoint["port"], service_ports)
        self.assertEqual(endpoint["port"], "metrics")
        self.assertEqual(endpoint["path"], "/metrics")
        live = self.container["livenessProbe"]["httpGet"]
        self.assertEqual((live["path"], live["port"]), ("/metrics", "metrics"))
        ready = self.container["readinessProbe"]["httpGet"]
        self.assertEqual((ready["path"], ready["port"]), ("/ready", "metrics"))

    def test_labels_select(self):
        """Deployment -> its pods, Service -> the pods, ServiceMonitor -> the Service."""
        pod_labels = self.pod["metadata"]["labels"]
        selector = self.deployment["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(selector.items(), pod_labels.items())
        self.assertLessEqual(self.service["spec"]["selector"].items(), pod_labels.items())
        self.assertLessEqual(self.monitor["spec"]["selector"]["matchLabels"].items(),
                             self.service["metadata"]["labels"].items())

    def test_security(self):
        """Non-root (the image's own user), no privilege escalation, no capabilities, read-only root."""
        pod = self.pod["spec"]["securityContext"]
        uid, _, gid = one(final_stage(), "USER").partition(":")
        self.assertTrue(pod["runAsNonRoot"])
        self.assertEqual((pod["runAsUser"], pod["runAsGroup"]), (int(uid), int(gid)))
        self.assertEqual(pod["seccompProfile"]["type"], "RuntimeDefault")
        container = self.container["securityContext"]
        self.assertIs(container["allowPrivilegeEscalation"], False)
        self.assertIs(container["readOnlyRootFilesystem"], True)
        self.assertEqual(container["capabilities"]["drop"], ["ALL"])
        self.assertIs(self.pod["spec"]["automountServiceAccountToken"], False)
        # Every port is above 1023: no capability is needed to bind it.
        self.assertTrue(all(p["containerPort"] > 1023 for p in self.container["ports"]))

    def kubectl(self) -> str:
        path = shutil.which("kubectl")
        if path is None:
            raise SkipTest("kubectl is not installed (not a test peer: the manifests are checked without it)")
        return path

    def test_kubectl_kustomize(self):
        """kubectl renders the kustomization offline: three objects, the image named as set."""
        out = subprocess.run([self.kubectl(), "kustomize", KUBERNETES], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        import yaml

        rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
        self.assertEqual(sorted(d["kind"] for d in rendered), ["Deployment", "Service", "ServiceMonitor"])
        (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
        (image,) = self.kustomization["images"]
        self.assertEqual(deployment["spec"]["template"]["spec"]["containers"][0]["image"],
                         f"{image['newName']}:{image['newTag']}")
