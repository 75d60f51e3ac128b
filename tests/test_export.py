"""python -m clipreid.export: safetensors + model card loadable by load_encoder and by open_clip itself, and an
ONNX encoder (uint8 in, L2-normalised features out, dynamic batch) matching PyTorch under onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipreid.checkpoint import save_checkpoint
from clipreid.errors import UserError
from clipreid.features import embed
from clipreid.model import ModelSpec, build_encoder
from clipreid.transforms import normalize
from clipreid.weights import encoder_checkpoint, load_encoder

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny-vit checkpoint with a non-default logit scale, so the card must carry it."""
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    with torch.no_grad():
        encoder.logit_scale.fill_(3.0)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, encoder_checkpoint(encoder))
    return path


@pytest.fixture(scope="module")
def exported(checkpoint):
    from clipreid.export import export

    return export(checkpoint)


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 128, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_export_writes_the_set_into_the_run_folder(checkpoint, exported):
    out = checkpoint.parent / "export"
    assert exported.output_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx", "model.safetensors"]
    assert exported.max_abs_diff <= 1e-4
    assert exported.fast_blocks  # clipreid.blocks' SDPA attention exports as it is
    card = json.loads((out / "model.json").read_text())
    assert card["model_spec"]["name"] == "tiny-vit" and card["feature_dim"] == 64
    assert card["preprocessing"]["input_size"] == [128, 64]
    assert card["preprocessing"]["interpolation"] == "bilinear"  # the default resampling, stored in the checkpoint
    assert card["logit_scale"] == pytest.approx(np.exp(3.0), rel=1e-6)
    assert [p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")] == []


def test_safetensors_loads_back_through_load_encoder(checkpoint, exported):
    original = load_encoder(checkpoint)
    loaded = load_encoder(checkpoint.parent / "export" / "model.safetensors")
    assert loaded.image_size == original.image_size and loaded.mean == original.mean and loaded.std == original.std
    assert loaded.logit_scale.item() == pytest.approx(3.0, abs=1e-6)
    x = normalize(_images(3), original.mean, original.std)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), rtol=0, atol=0)


def test_safetensors_keys_are_open_clips_own(checkpoint, exported):
    """Anyone with open_clip loads the weights into its own visual tower, no clipreid code involved."""
    from open_clip.transformer import VisionTransformer
    from safetensors.torch import load_file

    state = load_file(checkpoint.parent / "export" / "model.safetensors")
    assert not any(k.startswith(("backbone.", "model.")) for k in state) and "logit_scale" not in state
    visual = VisionTransformer(image_size=(128, 64), patch_size=16, width=64, layers=4, heads=4, mlp_ratio=2.0,
                               output_dim=64, act_layer=torch.nn.GELU)
    visual.proj = None  # clipreid removes the projection (remove_proj)
    visual.load_state_dict(state, strict=True)
    original = load_encoder(checkpoint)
    x = normalize(_images(2), original.mean, original.std)
    with torch.no_grad():
        torch.testing.assert_close(visual.eval()(x), original(x), rtol=1e-5, atol=1e-5)


def test_onnx_matches_pytorch_at_two_batch_sizes(checkpoint, exported, tmp_path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(checkpoint.parent / "export" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images" and session.get_inputs()[0].type == "tensor(uint8)"
    encoder = load_encoder(checkpoint)
    # the images the way clipreid sees them: letterboxed uint8 crops of any size
    paths = []
    for i, size in enumerate([(30, 90), (70, 40), (64, 128)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(paths[-1])
    expected, _ = embed(encoder, paths, device="cpu", progress=False)
    from clipreid.transforms import load_image

    images = torch.stack([load_image(p, encoder.image_size, encoder.interpolation) for p in paths]).numpy()
    for batch in (images[:1], images):
        features = session.run(["features"], {"images": batch})[0]
        assert features.shape == (len(batch), 64)
        np.testing.assert_allclose(features, expected[:len(batch)].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_a_failed_check_writes_nothing(checkpoint, tmp_path, monkeypatch):
    import clipreid.export as export_module

    monkeypatch.setattr(export_module, "_export_onnx", lambda module, path, opset: path.write_bytes(b"onnx"))
    monkeypatch.setattr(export_module, "check_onnx", lambda *a, **k: 0.5)
    with pytest.raises(UserError, match="differ from PyTorch's by 5.00e-01"):
        export_module.export(checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_packages_and_bad_input_are_one_line_errors(checkpoint, tmp_path, monkeypatch):
    import clipreid.export as export_module

    with pytest.raises(UserError, match="not found"):
        export_module.export(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="opset"):
        export_module.export(checkpoint, tmp_path / "o", opset=9)
    real = export_module.importlib.util.find_spec
    monkeypatch.setattr(export_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install clipreid\[export\]") as err:
        export_module.export(checkpoint, tmp_path / "o")
    assert "\n" not in str(err.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        load_encoder(bad)


def test_cli(checkpoint, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "clipreid.export", str(checkpoint.parent), "--output-dir", str(out),
                           "--opset", "18"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "max |difference|" in done.stdout and (out / "model.onnx").is_file()
    bad = subprocess.run([sys.executable, "-m", "clipreid.export", str(tmp_path / "missing.pt")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "not found" in bad.stderr


def test_falls_back_to_open_clips_own_blocks_when_the_fast_ones_do_not_export(checkpoint, tmp_path, monkeypatch):
    import clipreid.export as export_module
    from clipreid.blocks import SelfAttention

    real = export_module._export_onnx

    def picky(module, path, opset):
        if any(isinstance(m, SelfAttention) for m in module.modules()):
            path.write_bytes(b"half")
            raise RuntimeError("unsupported operator\nmore detail")
        real(module, path, opset)

    monkeypatch.setattr(export_module, "_export_onnx", picky)
    report = export_module.export(checkpoint, tmp_path / "plain")
    assert not report.fast_blocks and report.max_abs_diff <= 1e-4
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["model.json", "model.onnx",
                                                                        "model.safetensors"]


# --------------------------------------------------------------------------------------------------------------
# the CLI's way out is the scripts' one: one line, nothing left behind


def _cli(argv, capsys) -> tuple[int, str]:
    from clipreid.export import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err.strip()


def test_cli_output_that_is_a_file_is_one_line_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    import clipreid.export as export_module

    blocker = tmp_path / "model.onnx"
    blocker.write_text("a file")
    monkeypatch.setattr(export_module, "load_encoder", lambda *a: pytest.fail("loaded the model"))
    code, err = _cli([checkpoint, "--output-dir", blocker], capsys)
    assert code == 1
    assert err == f"error: cannot write to the --output-dir {blocker}: a path component is a file, not a folder; " \
                  "choose another folder"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and blocker.read_text() == "a file"


def test_cli_ctrl_c_is_interrupted_and_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    import clipreid.export as export_module

    def interrupt(module, path, opset):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_export_onnx", interrupt)
    code, err = _cli([checkpoint, "--output-dir", tmp_path / "new" / "export"], capsys)
    assert (code, err) == (130, "interrupted")
    assert list(tmp_path.iterdir()) == []  # no staging folder, and not the parent made for it


@pytest.mark.parametrize("errno_, reason, line", [
    (5, "Input/output error", "input/output error (a failing disk or a network folder that went away); check it "
                              "and run again"),
    (27, "File too large", "file too large for this file system; choose a folder on another one"),
    (28, "No space left on device", "no space left on the device; free some space and run again"),
])
def test_cli_write_failures_in_safetensors_are_one_line(checkpoint, tmp_path, capsys, monkeypatch, errno_, reason,
                                                          line):
    import safetensors.torch
    from safetensors import SafetensorError

    def failing(state, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise SafetensorError(f"Error while serializing: I/O error: {reason} (os error {errno_}) at path {path!r}")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    out = tmp_path / "export"
    code, err = _cli([checkpoint, "--output-dir", out], capsys)
    assert code == 1
    assert err == f"error: {out / 'model.safetensors'}: {line}"
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_write_failure_is_the_os_error(tmp_path, monkeypatch):
    """torch.save to a path turns a full disk into "unexpected pos"; through a file it stays the OSError."""
    import builtins
    import errno

    real_open = builtins.open

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.EIO, "Input/output error")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Failing(real_open(*a, **k)) if "w" in str(
        a[1] if len(a) > 1 else k.get("mode", "r")) else real_open(*a, **k))
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path / "runs" / "last.pt", {"w": torch.zeros(3)})
    assert info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_cli_a_full_disk_while_writing_onnx_is_the_disk_not_the_blocks(checkpoint, tmp_path, capsys, monkeypatch):
    import errno

    import clipreid.export as export_module

    tries = []

    def full(module, path, opset):
        tries.append(path)
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export_module, "_export_onnx", full)
    out = tmp_path / "export"
    code, err = _cli([checkpoint, "--output-dir", out], capsys)
    assert code == 1 and len(tries) == 1  # no second try with other blocks
    assert err == f"error: {out / 'model.onnx'}: no space left on the device; free some space and run again"
    assert list(tmp_path.iterdir()) == []
