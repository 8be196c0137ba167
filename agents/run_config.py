"""A run's config: the preset (``agents/hyperparams/*.yml``, rl-baselines3-zoo style) with the command line's
overrides, as one dict that train.py saves as ``config.yml`` so that evaluate.py and a resume need nothing else.

The RL sampler's preset is the algorithm's file (``<algo>.yml``) with the env's settings of the same preset
(``env.yml``, shared by every algorithm so that ablations differ only in the algorithm) as ``env_kwargs``. A
baseline's preset is ``<method>.yml``; it takes only the data protocol (:data:`DATA_KEYS`) from ``env.yml``, so that
its split is the method's, file for file.
"""

from __future__ import annotations

import argparse
import ast
import copy
from pathlib import Path
from typing import Any

import yaml

from agents.hyperparams_opt import deep_merge
from agents.runs import TRAINER_CHECKPOINT, restartable
from envs.data import DATA_KEYS
from models.runtime import DEFAULT_THREADS, check_device

__all__ = [
    "ENV_IDS",
    "HYPERPARAMS_DIR",
    "METHOD",
    "PRESETS",
    "load_preset",
    "parse_pairs",
    "parse_value",
    "preset_table",
    "read_config",
    "resolve_config",
    "resume_config",
    "validate_config",
]

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
ENV_IDS = ("MVTecPatch-v0",)
PRESETS = ("default", "paper", "paper-long")
METHOD = "sampler"  # the paper's method: an RL sampler (--algo) training the AE and predictor inside the env
# DATA_KEYS: the env settings a baseline takes from env.yml's preset (and --env-kwargs), so its split is the method's

# flags that fix what a run computes: -i refuses them, since config.yml already holds their values
RESUME_REFUSED = (
    ("--method", "method"),
    ("--env", "env"),
    ("--algo", "algo"),
    ("--seed", "seed"),
    ("--preset", "preset"),
    ("--env-kwargs", "env_kwargs"),
    ("--hyperparams", "hyperparams"),
    ("--eval-freq", "eval_freq"),
    ("--save-freq", "save_freq"),
    ("--data-root", "data_root"),
    ("--category", "category"),
    ("--image-size", "image_size"),
    ("--k-shot", "k_shot"),
)


def parse_value(text: str) -> Any:
    """``3e-4`` -> 0.0003, ``[64, 64]`` -> list, ``true`` -> True, anything else stays a string.

    Raises:
        ValueError: neither a Python literal nor YAML (an unclosed bracket or quote).
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"cannot read {text!r} ({problem}: an unclosed bracket or quote?)") from error
    return text if value is None else value


def parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """``["k:v", ...]`` of ``option`` (--env-kwargs, --hyperparams) -> ``{k: parse_value(v)}``.

    Raises:
        ValueError: a pair without ``key:`` or a value that cannot be read (names the option and the key).
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise ValueError(f"{option} expects key:value pairs, got {pair!r}")
        try:
            out[key] = parse_value(value)
        except ValueError as error:
            raise ValueError(f"{option} {key}: {error}") from error
    return out


# make_agent's own arguments: train.py sets them, --hyperparams cannot
AGENT_ARGUMENTS = ("policy", "env", "seed", "tensorboard_log", "device", "verbose", "_init_setup_model")
# ranges of the algorithms' keyword arguments (SB3's and Reinforce's): a value outside fails here, not mid-run
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
ALGO_RANGES: dict[str, tuple[Any, str]] = {
    "learning_rate": _POSITIVE,
    "n_steps": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
    "n_epochs": _AT_LEAST_1,
    "buffer_size": _AT_LEAST_1,
    "learning_starts": _NON_NEGATIVE,
    "train_freq": _AT_LEAST_1,
    "target_update_interval": _AT_LEAST_1,
    "stats_window_size": _AT_LEAST_1,
    "gamma": _UNIT,
    "gae_lambda": _UNIT,
    "tau": _UNIT,
    "exploration_fraction": _UNIT,
    "exploration_initial_eps": _UNIT,
    "exploration_final_eps": _UNIT,
    "ent_coef": _NON_NEGATIVE,
    "vf_coef": _NON_NEGATIVE,
    "max_grad_norm": _POSITIVE,
    "clip_range": _POSITIVE,
    "rms_prop_eps": _POSITIVE,
}


def check_hyperparams(algo: str, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """``hyperparams`` checked against algorithm ``algo``'s class: every key one of its arguments, every value of its
    type (converted where unambiguous, :func:`models.validation.check_value`) and range; then the class's own checks
    run on an env of the sampler's spaces, without building networks or buffers.

    Returns:
        the hyperparameters, converted.

    Raises:
        ValueError: one line naming the key and what it expects.
    """
    import inspect
    import typing

    from agents import AGENT_DEFAULTS, AGENTS
    from models.validation import check_value, expected

    cls: Any = AGENTS[algo]
    parameters = inspect.signature(cls.__init__).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # e.g. the random sampler
    valid = [name for name in parameters if name not in ("self", *AGENT_ARGUMENTS)]
    unknown = [key for key in hyperparams if key in AGENT_ARGUMENTS or (key not in valid and not open_ended)]
    if unknown:
        raise ValueError(
            f"--hyperparams {', '.join(unknown)}: not a setting of {cls.__name__} (valid: {', '.join(valid)}; the seed, "
            "the device and the log folder have flags of their own)"
        )
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        hints = {}
    out = dict(hyperparams)
    for key, value in hyperparams.items():
        within, words = ALGO_RANGES.get(key, (lambda v: True, ""))
        try:
            out[key] = check_value(key, value, hints[key]) if key in hints else value
            fits = not isinstance(out[key], (int, float)) or isinstance(out[key], bool) or within(out[key])
        except ValueError:
            fits = False
        if not fits:
            what = f"{expected(hints.get(key, float))} {words}".strip()
            raise ValueError(f"--hyperparams {key}={value!r} is invalid: expected {what}")
    try:
        cls("CnnPolicy", _spaces_only_env(), _init_setup_model=False, **{**AGENT_DEFAULTS.get(algo, {}), **out})
    except (ValueError, AssertionError, TypeError) as error:
        raise ValueError(f"--hyperparams: {str(error).splitlines()[0]}") from error
    return out


def _spaces_only_env() -> Any:
    """An env with the sampler's action space and an image-like observation space that never steps: what an algorithm's
    constructor checks its arguments against (:func:`check_hyperparams`)."""
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces

    class SpacesOnly(gym.Env):
        observation_space = spaces.Box(0.0, 1.0, (6, 8, 8), np.float32)
        action_space = spaces.Discrete(9)

    return SpacesOnly()


def preset_table(path: Path, env_id: str, preset: str, what: str) -> dict[str, Any]:
    """Preset ``preset`` of ``env_id`` in the YAML file ``path`` (a copy); ``what`` names the file's owner in errors."""
    if not path.is_file():
        raise ValueError(f"no hyperparameter file '{path}' for {what}")
    table = yaml.safe_load(path.read_text()) or {}
    if env_id not in table:
        raise ValueError(f"'{path}' has no entry for env {env_id!r} (has: {', '.join(table)})")
    if preset not in table[env_id]:
        raise ValueError(f"unknown preset {preset!r} for {what}/{env_id} (valid: {', '.join(table[env_id])})")
    return copy.deepcopy(table[env_id][preset] or {})


def load_preset(algo: str, env_id: str, preset: str) -> dict[str, Any]:
    """A preset's hyperparameters: the algorithm's (``hyperparams/<algo>.yml``) with the env's settings
    (``hyperparams/env.yml``) as ``env_kwargs``; an algorithm file's own ``env_kwargs`` override the shared ones key
    by key. A preset that only the algorithm's file names (a study's ``best_preset.yml`` pasted there) is
    self-contained: its ``env_kwargs`` are all the env settings."""
    hyperparams = preset_table(HYPERPARAMS_DIR / f"{algo}.yml", env_id, preset, f"algo {algo!r}")
    env_presets = (yaml.safe_load((HYPERPARAMS_DIR / "env.yml").read_text()) or {}).get(env_id) or {}
    env_kwargs = copy.deepcopy(env_presets.get(preset) or {})
    hyperparams["env_kwargs"] = deep_merge(env_kwargs, hyperparams.get("env_kwargs") or {})
    return hyperparams


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags the user gave (--data-root, --category, --image-size, --k-shot), as env kwargs."""
    given = {"data_root": args.data_root, "category": args.category, "image_size": args.image_size, "k_shot": args.k_shot}
    return {key: value for key, value in given.items() if value is not None}


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """One dict with everything a new run needs (train.py's parsed flags -> ``config.yml``).

    Raises:
        ValueError: an unknown method, env, algorithm or preset, a bad key:value pair or a run of no length.
    """
    from agents import AGENTS
    from models.baselines import BASELINES

    args = copy.copy(args)
    method = getattr(args, "method", None) or METHOD
    if method != METHOD and method not in BASELINES:
        raise ValueError(f"unknown method {method!r} (valid: {METHOD}, {', '.join(BASELINES)})")
    if method != METHOD and args.algo is not None:
        raise ValueError(f"--algo chooses the RL sampler's algorithm; --method {method} trains no agent")
    args.env, args.algo, args.preset = args.env or ENV_IDS[0], args.algo or "reinforce", args.preset or PRESETS[0]
    args.seed = 0 if args.seed is None else args.seed
    if args.env not in ENV_IDS:
        raise ValueError(f"unknown env {args.env!r} (valid: {', '.join(ENV_IDS)})")
    if method != METHOD:
        return _baseline_config(args, method)
    if args.algo not in AGENTS:
        raise ValueError(f"unknown algo {args.algo!r} (valid: {', '.join(AGENTS)})")
    hyperparams = load_preset(args.algo, args.env, args.preset)
    hyperparams.update(parse_pairs(args.hyperparams, "--hyperparams"))
    env_kwargs = {**(hyperparams.pop("env_kwargs", None) or {}), **data_options(args)}
    env_kwargs = deep_merge(env_kwargs, parse_pairs(args.env_kwargs, "--env-kwargs"))
    head = {"method": METHOD, "env": args.env, "algo": args.algo}
    return validate_config(_config(head, args, "n_timesteps", hyperparams, env_kwargs))


def _baseline_config(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """A baseline's config: its preset (``hyperparams/<method>.yml``) and --hyperparams as the trainer's settings,
    the data protocol of env.yml's preset of the same name (and --data-root, --k-shot, ...) as env_kwargs."""
    hyperparams = preset_table(HYPERPARAMS_DIR / f"{method}.yml", args.env, args.preset, f"method {method!r}")
    hyperparams = deep_merge(hyperparams, parse_pairs(args.hyperparams, "--hyperparams"))
    env_preset = preset_table(HYPERPARAMS_DIR / "env.yml", args.env, args.preset, "the env") if args.preset in PRESETS else {}
    data = {**{key: value for key, value in env_preset.items() if key in DATA_KEYS}, **data_options(args)}
    extra = parse_pairs(args.env_kwargs, "--env-kwargs")
    unknown = sorted(set(extra) - set(DATA_KEYS))
    if unknown:
        raise ValueError(
            f"--env-kwargs {', '.join(unknown)} do not apply to --method {method} (valid: {', '.join(DATA_KEYS)})"
        )
    data.update(extra)
    # when to stop before n_updates (agents.baseline_trainer): run settings, not the trainer's
    stopping = {key: hyperparams.pop(key) for key in STOPPING if key in hyperparams}
    config = _config({"method": method, "env": args.env}, args, "n_updates", hyperparams, data)
    return validate_config({**config, **stopping})


def _config(
    head: dict[str, Any], args: argparse.Namespace, length: str, hyperparams: dict[str, Any], env_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The config dict: ``head``, the run's settings, its ``length`` (env steps or updates) and frequencies (the
    preset's, popped from ``hyperparams``, or the flags'), then ``env_kwargs`` (with the seed, the device and an
    absolute data root) and the remaining ``hyperparams``."""
    device = check_device(args.device or "cpu")
    env_kwargs.update(seed=args.seed, device=device)
    if env_kwargs.get("data_root") is not None:
        env_kwargs["data_root"] = str(Path(env_kwargs["data_root"]).resolve())
    run = {key: hyperparams.pop(key) for key in (length, "eval_freq", "save_freq") if key in hyperparams}
    for key, value in ((length, args.n_timesteps), ("eval_freq", args.eval_freq), ("save_freq", args.save_freq)):
        if value is not None:
            run[key] = value
    return {
        **head,
        "preset": args.preset,
        "seed": args.seed,
        "device": device,
        "threads": DEFAULT_THREADS if args.threads is None else args.threads,
        length: run.get(length, 0),
        "eval_freq": run.get("eval_freq", 0),
        "save_freq": run.get("save_freq", 0),
        "env_kwargs": env_kwargs,
        "hyperparams": hyperparams,
    }


# a baseline's early stop, set in its preset or by --hyperparams: after at least min_updates updates, stop once the
# validation pixel F1max has not improved for `patience` evaluations (0: train all n_updates)
STOPPING = ("patience", "min_updates")

# the run settings of a config and the flags that set them (for messages)
RUN_FLAGS = {"n_timesteps": "-n", "n_updates": "-n", "eval_freq": "--eval-freq", "save_freq": "--save-freq"}


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a run config (new, continued or read from ``config.yml``) before any data is read or any
    folder is made, so that ``--dry-run`` catches them all; numbers are converted where unambiguous.

    Returns:
        ``config``, checked.

    Raises:
        ValueError: one line naming the setting and what it expects.
    """
    from agents import AGENTS
    from envs.config import MVTecPatchConfig
    from envs.data import check_data_options
    from models.baselines import BASELINES
    from models.validation import check_value

    method = config.get("method", METHOD)
    if method != METHOD and method not in BASELINES:
        raise ValueError(f"unknown method {method!r} (valid: {METHOD}, {', '.join(BASELINES)})")
    length = "n_timesteps" if method == METHOD else "n_updates"
    for key, low in ((length, 1), ("eval_freq", 0), ("save_freq", 0)):
        flag = RUN_FLAGS[key]
        config[key] = check_value(flag, config.get(key, 0), int)
        if config[key] < low:
            where = f" (set {flag} or {key} in the preset)" if key == length else " (0: none)"
            raise ValueError(f"{flag}={config[key]} is invalid: expected an integer >= {low}{where}")
    config["seed"] = check_value("--seed", config.get("seed", 0), int)
    config["threads"] = check_value("--threads", config.get("threads", DEFAULT_THREADS), int)
    if config["threads"] < 1:
        raise ValueError(f"--threads={config['threads']} is invalid: expected an integer >= 1 (torch CPU threads)")
    if method == METHOD:
        MVTecPatchConfig.from_kwargs(**config["env_kwargs"])
        if config.get("algo") not in AGENTS:
            raise ValueError(f"unknown algo {config.get('algo')!r} (valid: {', '.join(AGENTS)})")
        config["hyperparams"] = check_hyperparams(config["algo"], config["hyperparams"])
    else:  # the data protocol alone
        data = {key: value for key, value in config["env_kwargs"].items() if key != "device"}
        config["env_kwargs"].update(check_data_options(**data))
        BASELINES[method].config_from_dict({**config["hyperparams"], "device": config["device"]})
        for key in STOPPING:
            config[key] = check_value(key, config.get(key, 0), int)
            if config[key] < 0:
                raise ValueError(f"{key}={config[key]} is invalid: expected an integer >= 0 (0: none)")
        if config["patience"] and config["eval_freq"] < 1:
            raise ValueError(f"patience={config['patience']} needs validation: set --eval-freq or eval_freq >= 1")
    return config


def read_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.yml``: a mapping with the keys train.py writes (its values are checked by
    :func:`validate_config`, or by whoever builds from them).

    Raises:
        ValueError: no such file, not YAML, not a mapping, or a key missing (names the file).
    """
    path = Path(run_dir) / "config.yml"
    if not path.is_file():
        raise ValueError(f"'{run_dir}' is not a run folder (expected config.yml from a previous train.py run)")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"'{path}' is not valid YAML ({problem}): expected the config train.py wrote") from error
    if not isinstance(config, dict):
        raise ValueError(f"'{path}' holds {_a(config)}: expected a mapping of the run's settings (train.py's)")
    method = config.get("method", METHOD)
    required = ["env", "seed", "device", "env_kwargs", "hyperparams"]
    required += ["algo", "n_timesteps"] if method == METHOD else ["n_updates"]
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"'{path}' lacks {', '.join(missing)}: expected the config train.py wrote")
    for key in ("env_kwargs", "hyperparams"):
        if not isinstance(config[key], dict):
            raise ValueError(f"'{path}': {key} is {_a(config[key])}, expected a mapping")
    return config


def _a(value: Any) -> str:
    """``42`` -> "an int", ``[1]`` -> "a list": what a value is, for messages."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def resume_config(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The saved config of ``run_dir`` with what -i may change: a larger -n, --device, --threads.

    Raises:
        ValueError: not a run folder, no checkpoint to continue from, a refused flag, or a smaller -n.
    """
    from agents import check_agent_zip
    from agents.callbacks import latest_checkpoint
    from agents.resume import RUN_STATE

    if not (run_dir / "config.yml").is_file():
        raise ValueError(f"'{run_dir}' is not a run folder (expected config.yml from a previous train.py run)")
    refused = [flag for flag, name in RESUME_REFUSED if getattr(args, name) is not None]
    if refused:
        raise ValueError(
            f"-i continues '{run_dir}' with its saved config.yml: {', '.join(refused)} cannot change "
            "(valid with -i: -n, --device, --threads; start a new run for anything else)"
        )
    config = read_config(run_dir)
    sampler = config.get("method", METHOD) == METHOD
    # a folder stopped in the warm-up, before its first checkpoint, holds no result yet: -i starts it again
    if sampler and not restartable(run_dir):
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None or not (checkpoint / "agent.zip").is_file() or not (checkpoint / "env_state.pt").is_file():
            raise ValueError(
                f"'{run_dir}' has no complete checkpoint to continue from (expected checkpoints/latest.json and the folder "
                "it names): start a new run without -i"
            )
        if not (checkpoint / RUN_STATE).is_file():
            raise ValueError(f"'{checkpoint}' was written by an older version (no {RUN_STATE}): start a new run without -i")
        check_agent_zip(checkpoint / "agent.zip")  # a pickled (received or crafted) agent is refused before any write
    elif not sampler and not (run_dir / TRAINER_CHECKPOINT).is_file() and not restartable(run_dir):
        raise ValueError(f"'{run_dir}' has no checkpoint to continue from (expected {TRAINER_CHECKPOINT}): start a new run")
    if args.device is not None:
        config["device"] = config["env_kwargs"]["device"] = args.device
    config["device"] = config["env_kwargs"]["device"] = check_device(str(config["device"]))
    if args.threads is not None:
        config["threads"] = args.threads
    config.setdefault("threads", DEFAULT_THREADS)
    validate_config(config)
    length = "n_timesteps" if sampler else "n_updates"
    if args.n_timesteps is not None:
        if args.n_timesteps < config[length]:
            raise ValueError(f"-n {args.n_timesteps} is smaller than the run's {length} {config[length]}")
        config[length] = args.n_timesteps
    return config
