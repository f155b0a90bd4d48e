"""Sub-runs: the experiments' trainings are stages of run folders inside the run, made by the commands.

Every training an experiment needs is one stage command (``ppo``, ``grpo``,
``rloo``, ``dpo``, ``rm``) run exactly as a user would run it, its argv
through the command line's parser (as ``pipeline`` does), on a *sub-run*::

    <run>/experiments/base/        the parent's sft, collect, rm (and dpo) linked in; every
                                   training on the run's own pairs and reward model (frontier,
                                   over-optimisation, KL control, and the noise experiment at 0)
    <run>/experiments/flip-0.2/    sft linked in; collect = the run's pairs with 20% of the
                                   labels flipped; rm, the DPO variants and PPO made on them

A linked stage is the parent's: its files are hard links (copies where the
file system has none) and its config.json record is copied with its id, so
the staleness check of run folders works across them: when the parent's
``rm`` is made again, the sub-run's copy is replaced and every stage made
from the old one is stale, and is made again.

One training serves every experiment that needs it (the PPO at the default
KL coefficient is a point of the frontier, the "KL on" run of the
over-optimisation experiment, the fixed-coefficient run of the KL-control
experiment and the flip-rate-0 RM+PPO of the noise experiment): its stage
name is a function of its command and flags (``ppo_kl0p05``), and a stage
that is there, complete, made from the current inputs and with the config
the flags resolve to, is reused. A stage that stopped is continued
(``--resume``). A stage with the same name but another config (another
``--preset``) is an error, not silently replaced. A linked parent stage with
exactly the wanted config serves too (the run's own ``dpo`` is the DPO
point at its beta).

Checkpoints along training (over-optimisation): a PPO stage is trained in
segments, ``--steps k`` then ``--resume --steps 2k`` ..., and after each
segment its checkpoint is hard-linked to ``snapshots/<stage>_step<k>.npz``.
A resumed PPO continues exactly (``tests/test_rl_commands.py``), so the
segments make the same weights as one straight run.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import shutil
import time

from ..commands import COMMANDS
from ..commands.collect import HELDOUT_PAIRS, PAIRS
from ..commands.common import PRESETS as STAGE_PRESETS
from ..commands.common import STAGES, say
from ..runs import RunFolder, explicit_values, load_config_file, resolve
from .common import Stopped

__all__ = ["LINKED_FILES", "SubRuns", "stage_config_class"]

# The commands whose stages start from the parent's own stage config (SubRuns._write_inherited).
INHERITED = ("rm", "dpo")

# The files each parent stage owns, linked into a sub-run with its record.
LINKED_FILES = {"sft": ("sft.npz",), "collect": (PAIRS, HELDOUT_PAIRS), "rm": ("rm.npz",), "dpo": ("dpo.npz",)}


def stage_config_class(command: str):
    """(config dataclass, preset section) of a training command, as its ``open_stage`` resolves it."""
    if command == "dpo":
        from ..trainers.dpo_lm import DPOConfig

        return DPOConfig, "dpo"
    if command == "rm":
        from ..trainers.reward_lm import RewardLMConfig

        return RewardLMConfig, "rm"
    module = importlib.import_module(f"alignment_np.commands.{command}")
    return getattr(module, f"{command.upper()}StageConfig"), command


def link_file(source: str, target: str) -> None:
    """``target`` becomes ``source``'s content: a hard link (a copy where links fail), swapped in atomically.

    The stages write their files by atomic rename, so a later save of the
    parent's file makes a new file and leaves the link's content as it was.
    """
    tmp = f"{target}.{os.getpid()}.link"
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


class SubRuns:
    """The sub-run folders of one experiment session, and the stage commands run in them.

    parent: the run folder. root: ``<run>/experiments``. stage_flags: the
    flags every stage takes (``--preset``, ``--backend``, ``--quiet``).
    force: make every stage this session needs again (once each).
    """

    def __init__(self, parent: RunFolder, root: str, stage_flags: list, force: bool, quiet: bool, command: str):
        from ..cli import build_parser

        self.parent, self.root, self.stage_flags = parent, root, list(stage_flags)
        self.force, self.quiet, self.command = force, quiet, command
        self.parser = build_parser()
        self.made: set = set()  # (sub-run path, stage) made again in this session
        self.linked: set = set()
        self.inherited = self._write_inherited()

    def _write_inherited(self) -> str:
        """``<root>/stage_configs.json``: the parent's own rm and dpo configs, the base of those stages here.

        A reward model or a DPO point of an experiment is trained with the config the run's own
        stage was made with, changed only where the experiment says (beta, the loss, the pairs):
        so the comparison with the run's stage is fair, and the run's ``dpo`` is itself the DPO
        point at its beta. Passed to those commands as ``--config``.
        """
        import json

        from ..io import atomic_write

        sections = {}
        for name in INHERITED:
            record = self.parent.stage(name)
            if record is not None and record.complete and not self.parent.stale_inputs(name):
                sections[name] = record["config"]
        path = os.path.join(self.root, "stage_configs.json")
        text = json.dumps(sections, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    # ------------------------------------------------------------------ folders
    def folder(self, name: str, link=("sft", "collect", "rm", "dpo")) -> RunFolder:
        """The sub-run ``<root>/<name>`` with the parent's stages ``link`` linked in (kept current)."""
        sub = RunFolder(os.path.join(self.root, name))
        if sub.task is None:
            sub.set_task(self.parent.task)
        if (sub.path, tuple(link)) not in self.linked:
            self._link(sub, link)
            self.linked.add((sub.path, tuple(link)))
        return sub

    def _link(self, sub: RunFolder, names) -> None:
        results = self.parent.results()
        for name in names:
            record = self.parent.stage(name)
            usable = record is not None and record.complete and not self.parent.stale_inputs(name)
            if not usable:
                if name == "dpo":  # optional: the run's DPO serves only as a point at its own config
                    continue
                self.parent.require(name, by="the experiments")  # raises, naming what is missing
            mine = sub.stage(name)
            files = LINKED_FILES[name]
            if mine is not None and mine.get("id") == record["id"] and all(os.path.exists(sub.file(f)) for f in files):
                continue
            for f in files:
                link_file(self.parent.file(f), sub.file(f))
            fields = {k: v for k, v in record.items()}
            fields["linked_from"] = os.path.relpath(self.parent.path, sub.path)
            data = sub.read_config()
            data["stages"][name] = fields  # replaces the old copy: stages made from it are now stale
            _write_config(sub, data)
            if name in results:
                sub.save_results(name, results[name])

    def derive_noisy_pairs(self, sub: RunFolder, flip_rate: float) -> dict:
        """``sub``'s collect stage: the parent's pairs with exactly ``flip_rate`` of the labels flipped.

        The flips use the parent collect's seed, through ``tasks.collect.flip_labels``: the pairs
        are exactly those ``collect --flip-rate R`` (same config) would write, without sampling
        again. The held-out pairs stay clean (a link to the parent's): what the reward model and
        DPO are measured against. Returns the collect stage's summary.
        """
        from ..data.preferences import load_preferences, save_preferences
        from ..tasks.collect import flip_labels

        source = self.parent.require("collect", by="the noise experiment")
        if source["config"].get("flip_rate", 0.0) != 0.0:
            raise ValueError(f"noise: {self.parent.path}'s pairs were collected with flip_rate "
                             f"{source['config']['flip_rate']}; the experiment flips clean pairs (collect with "
                             "--flip-rate 0)")
        mine = sub.stage("collect")
        config = {**source["config"], "flip_rate": flip_rate}
        if (mine is not None and mine.complete and mine.get("derived_from", {}).get("id") == source["id"]
                and mine.get("config") == config and os.path.exists(sub.file(PAIRS))
                and os.path.exists(sub.file(HELDOUT_PAIRS))):
            return sub.results().get("collect", {})
        start = time.perf_counter()
        pairs = load_preferences(self.parent.file(PAIRS))
        noisy, flipped = flip_labels(pairs, flip_rate, seed=source["config"]["seed"])
        sub.begin("collect", config, inputs=("sft",), force=mine is not None, command=self.command)
        save_preferences(noisy, sub.file(PAIRS))
        link_file(self.parent.file(HELDOUT_PAIRS), sub.file(HELDOUT_PAIRS))
        summary = {"pairs": len(noisy), "flipped": flipped, "flip_rate": flip_rate,
                   "heldout_pairs": self.parent.results().get("collect", {}).get("heldout_pairs"),
                   "derived_from": f"{self.parent.path} collect (id {source['id']}): its pairs, labels flipped"}
        sub.save_results("collect", summary)
        sub.update_stage("collect", derived_from={"run": os.path.relpath(self.parent.path, sub.path),
                                                  "stage": "collect", "id": source["id"]})
        sub.finish("collect", "complete", len(noisy), time.perf_counter() - start)
        return summary

    # ------------------------------------------------------------------ stages
    def wanted_config(self, argv: list) -> dict:
        """The config a stage command would record for ``argv`` (defaults < preset < flags), as JSON."""
        args = self.parser.parse_args(argv)
        cls, section = stage_config_class(args.command)
        preset = STAGE_PRESETS[args.preset or "default"].get(section, {})
        file_values = load_config_file(args.config, section, STAGES) if args.config else {}
        return _json(dataclasses.asdict(resolve(cls, explicit_values(args, cls), file_values, preset)))

    def default(self, command: str, field: str):
        """The value of config field ``field`` that ``command`` would train with when the flag is not given."""
        argv = [command, "--run", self.root] + (["--config", self.inherited] if command in INHERITED else [])
        return self.wanted_config(argv + self.stage_flags)[field]

    def run_command(self, argv: list) -> int:
        """Run one stage command in this process, as ``python -m alignment_np ARGV`` would."""
        args = self.parser.parse_args(argv)
        args.command_line = "python -m alignment_np " + " ".join(shlex.quote(a) for a in argv)
        say(f"== {args.command_line}", self.quiet)
        code = importlib.import_module(f"alignment_np.commands.{COMMANDS[args.command]}").run(args)
        if code not in (0, 1):  # 130 / 143: Ctrl-C or SIGTERM; the stage saved and can be resumed
            raise Stopped(code, f"stage {argv[0]} in {argv[2]} stopped (exit status {code})")
        return code

    def train(self, sub: RunFolder, command: str, name: str, flags=(), snapshots=()) -> dict:
        """Make sure stage ``name`` of ``sub`` is trained by ``command FLAGS``; returns what it is.

        snapshots: steps at which to keep a copy of the checkpoint (the last is the stage's
        ``steps``); trained in segments, see the module docstring.
        Returns {"stage", "id", "step", "status" ("complete" or "failed": a NaN stopped it),
        "config", "snapshots": {step: path}}. Raises ``Stopped`` when a signal stopped it.
        """
        argv = [command, "--run", sub.path] + ([] if command == "rm" else ["--name", name])
        argv += ["--config", self.inherited] if command in INHERITED else []
        argv += [str(f) for f in flags] + self.stage_flags
        want = self.wanted_config(argv)
        if not snapshots:
            for other, record in sub.stages().items():  # a linked parent stage with exactly this config
                if (record.get("linked_from") and other != name and record.complete and not sub.stale_inputs(other)
                        and record.get("config") == want):
                    return _point(sub, other)
        targets = [int(s) for s in snapshots] or [int(want["steps"])]
        if targets[-1] != want["steps"] or targets != sorted(set(targets)):
            raise ValueError(f"snapshots: increasing steps ending at the stage's {want['steps']}, got {targets}")
        record = sub.stage(name)
        start = None  # None: carry on with what is there; "new" or "--force": train from the SFT model
        if record is None:
            start = "new"
        elif (self.force and (sub.path, name) not in self.made) or sub.stale_inputs(name):
            start = "--force"
        elif _differs(record.get("config", {}), want):
            raise ValueError(
                f"experiment: stage {name!r} of {sub.path} was made with another config than "
                f"`{' '.join(argv)}` gives ({_difference(record.get('config', {}), want)}); run the "
                "experiment with the --preset it was made with, or make it again with --force")
        elif record.get("status") == "failed":  # a NaN stopped it: deterministic, so it would again
            return _point(sub, name)
        for target in targets:
            record = sub.stage(name)
            steps = ["--steps", str(target)] if snapshots else []
            if start is not None:
                how = [] if start == "new" else [start]
                start = None
                if self.force:
                    self.made.add((sub.path, name))
            elif int(record.get("step") or 0) >= target and (record.complete or target != targets[-1]):
                how = None  # done already (a stage stopped later than this checkpoint kept it)
            elif not os.path.exists(sub.checkpoint(name)):
                how = ["--force"]  # stopped before its first save: nothing to continue
            else:
                how = ["--resume"]
            if how is not None and self.run_command(argv + steps + how) != 0:
                return _point(sub, name)  # failed: the command said why; the point says so
            if snapshots:
                self._snapshot(sub, name, target)
        return _point(sub, name)

    def _snapshot(self, sub: RunFolder, name: str, step: int) -> None:
        """Keep the checkpoint of stage ``name`` at ``step`` as ``snapshots/<name>_step<step>.npz``."""
        record = sub.stage(name)
        kept = dict(record.get("snapshots") or {})
        path = os.path.join("snapshots", f"{name}_step{step}.npz")
        if kept.get(str(step)) == path and os.path.exists(sub.file(path)):
            return
        if int(record.get("step") or 0) != step:
            raise ValueError(
                f"experiment: stage {name!r} of {sub.path} is at step {record.get('step')} without a checkpoint "
                f"kept at step {step} (it was trained by another schedule); make it again with --force")
        os.makedirs(sub.file("snapshots"), exist_ok=True)
        link_file(sub.checkpoint(name), sub.file(path))
        kept[str(step)] = path
        sub.update_stage(name, snapshots=kept)


def _point(sub: RunFolder, name: str) -> dict:
    record = sub.stage(name)
    return {"stage": name, "id": record["id"], "step": int(record.get("step") or 0),
            "status": record.get("status"), "config": record.get("config", {}),
            "snapshots": {int(k): sub.file(v) for k, v in (record.get("snapshots") or {}).items()}}


def _differs(stored: dict, want: dict) -> bool:
    """True when the configs differ in anything but ``steps`` (a segmented stage's steps grow)."""
    keys = (set(stored) | set(want)) - {"steps"}
    return any(stored.get(k) != want.get(k) for k in keys)


def _difference(stored: dict, want: dict) -> str:
    keys = sorted((set(stored) | set(want)) - {"steps"})
    return ", ".join(f"{k}: {stored.get(k)!r} there, {want.get(k)!r} wanted" for k in keys
                     if stored.get(k) != want.get(k))


def _json(value):
    """A config dict as config.json holds it (tuples as lists)."""
    import json

    return json.loads(json.dumps(value))


def _write_config(sub: RunFolder, data: dict) -> None:
    # The run folder's own writer (atomic); a linked record is copied whole, id included.
    sub._write_config(data)
