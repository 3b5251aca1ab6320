"""prefquant's torch-only safetensors I/O and quantizer save/load."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
import torch

from prefquant import (
    CheckpointError,
    ResidualQuantizer,
    VectorQuantizer,
    fit_quantizer,
    load_quantizer,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def all_dtypes() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=gen)
    return {
        "f64": base.double(),
        "f32": base,
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(-6, 6).reshape(3, 4),
        "i32": torch.arange(7, dtype=torch.int32),
        "i16": torch.tensor([-3, 4], dtype=torch.int16),
        "i8": torch.tensor([[-1], [2]], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": base.t(),  # non-contiguous view
    }


def test_safetensors_round_trip_all_dtypes(tmp_path):
    tensors = all_dtypes()
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, metadata={"who": "test"})
    loaded = load_safetensors(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    assert read_safetensors_metadata(path) == {"who": "test"}
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp files left behind


def test_files_interoperate_with_reference_safetensors(tmp_path):
    reference = pytest.importorskip("safetensors.torch")
    tensors = all_dtypes()
    tensors["strided"] = tensors["strided"].contiguous()  # the reference writer refuses views
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_safetensors(tensors, ours)
    reference.save_file(tensors, str(theirs), metadata={"k": "v"})
    for path in (ours, theirs):
        for reader in (load_safetensors, reference.load_file):
            loaded = reader(str(path))
            for name, tensor in tensors.items():
                assert torch.equal(loaded[name], tensor), (path.name, reader, name)
    assert read_safetensors_metadata(theirs) == {"k": "v"}


def write_header(path, header: dict, data: bytes, pad: bool = True) -> None:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "trailing"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "exactly dtype, shape, data_offsets"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "overlaps",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
        ([1, 2], b"", "JSON object"),
    ],
)
def test_corrupt_safetensors_headers_are_rejected_with_file_name(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    write_header(path, header, data)
    with pytest.raises(CheckpointError, match=message) as info:
        load_safetensors(path)
    assert "bad.safetensors" in str(info.value)


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.safetensors"
    save_safetensors({"w": torch.randn(16, 4)}, good)
    blob = good.read_bytes()
    for cut in (0, 5, 8, 20, len(blob) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_safetensors(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="implausible"):
        load_safetensors(garbage)
    not_json = tmp_path / "notjson.safetensors"
    not_json.write_bytes(struct.pack("<Q", 8) + b"{{{{{{{{")
    with pytest.raises(CheckpointError, match="JSON"):
        load_safetensors(not_json)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_safetensors(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def trained() -> tuple[ResidualQuantizer, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(300, 8)
    rq = ResidualQuantizer(8, num_levels=3, codebook_size=16, dead_code_patience=2)
    fit_quantizer(rq, x, epochs=2, batch_size=100)
    return rq, x


def test_save_load_gives_bit_identical_outputs(tmp_path, trained):
    rq, x = trained
    rq.save_pretrained(tmp_path / "rq")
    assert sorted(p.name for p in (tmp_path / "rq").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ResidualQuantizer.from_pretrained(tmp_path / "rq")
    assert not loaded.training
    assert loaded.config() == rq.config()
    assert torch.equal(loaded.encode(x), rq.encode(x))
    assert torch.equal(loaded.decode(rq.encode(x)), rq.decode(rq.encode(x)))
    for name, value in rq.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    # Training continues from the same state (EMA statistics and dead-code counters were saved).
    rq_copy = ResidualQuantizer.from_pretrained(tmp_path / "rq")
    torch.manual_seed(1)
    rq_copy.train()
    rq_copy(x[:50])
    torch.manual_seed(1)
    fresh = ResidualQuantizer.from_pretrained(tmp_path / "rq")
    fresh.train()
    fresh(x[:50])
    assert torch.equal(rq_copy.codebooks, fresh.codebooks)
    assert isinstance(load_quantizer(tmp_path / "rq"), ResidualQuantizer)


def test_vector_quantizer_and_float64_round_trip(tmp_path):
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 8, use_cosine=True, codebook_mode="learned").double()
    vq.train()
    vq(torch.randn(32, 4, dtype=torch.float64))
    vq.save_pretrained(tmp_path / "vq")
    loaded = VectorQuantizer.from_pretrained(tmp_path / "vq")
    assert loaded.codebook.dtype == torch.float64
    assert isinstance(loaded.codebook, torch.nn.Parameter)
    x = torch.randn(20, 4, dtype=torch.float64)
    assert torch.equal(loaded.encode(x), vq.encode(x))
    with pytest.raises(CheckpointError, match="not a ResidualQuantizer"):
        ResidualQuantizer.from_pretrained(tmp_path / "vq")


def edit_config(directory, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(format_version=99), "format_version 99"),
        (lambda c: c.update(format="other"), "not a prefquant quantizer config"),
        (lambda c: c.update({"class": "Transformer"}), "unknown quantizer class"),
        (lambda c: c["config"].update(codebook_size=32), "shape"),
        (lambda c: c["config"].update(num_levels=2), "unexpected"),
        (lambda c: c["config"].update(dim=-1), "invalid ResidualQuantizer config"),
        (lambda c: c["config"].update(colour="red"), "invalid ResidualQuantizer config"),
        (lambda c: c.update(dtype="float64"), "dtype"),
        (lambda c: c.update(dtype="int4"), "unsupported dtype"),
        (lambda c: c.pop("config"), "missing field"),
    ],
)
def test_load_validates_config_against_weights(tmp_path, trained, change, message):
    rq, _ = trained
    rq.save_pretrained(tmp_path / "rq")
    edit_config(tmp_path / "rq", change)
    with pytest.raises(CheckpointError, match=message) as info:
        ResidualQuantizer.from_pretrained(tmp_path / "rq")
    assert "rq" in str(info.value)


def test_load_rejects_corrupt_weights_and_bad_files(tmp_path, trained):
    rq, _ = trained
    directory = tmp_path / "rq"
    rq.save_pretrained(directory)
    weights = directory / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[:-3])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        ResidualQuantizer.from_pretrained(directory)
    state = rq.state_dict()
    state["levels.0.codebook"] = torch.full_like(state["levels.0.codebook"], float("nan"))
    save_safetensors(state, weights)
    with pytest.raises(CheckpointError, match="NaN"):
        ResidualQuantizer.from_pretrained(directory)
    state = rq.state_dict()
    state["levels.1.steps_since_used"] = state["levels.1.steps_since_used"].int()
    save_safetensors(state, weights)
    with pytest.raises(CheckpointError, match="dtype"):
        ResidualQuantizer.from_pretrained(directory)
    state = rq.state_dict()
    del state["levels.2.embed_sum"]
    save_safetensors(state, weights)
    with pytest.raises(CheckpointError, match="missing.*levels.2.embed_sum"):
        ResidualQuantizer.from_pretrained(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*JSON"):
        ResidualQuantizer.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ResidualQuantizer.from_pretrained(directory)


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path, trained):
    rq, x = trained
    directory = tmp_path / "rq"
    other = ResidualQuantizer(8, num_levels=3, codebook_size=16, kmeans_init=False)
    other.save_pretrained(directory)
    rq.save_pretrained(directory)
    assert torch.equal(ResidualQuantizer.from_pretrained(directory).encode(x), rq.encode(x))
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]


def test_no_pickle_in_saved_files(tmp_path, trained):
    rq, _ = trained
    rq.save_pretrained(tmp_path / "rq")
    blob = (tmp_path / "rq" / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8 : 8 + header_len])
    assert header["__metadata__"]["class"] == "ResidualQuantizer"
    assert b"\x80\x02" not in blob[:2] and not blob.startswith(b"PK")  # neither pickle nor torch zip


def test_save_load_work_without_numpy(tmp_path):
    # torch does not require numpy, so neither may prefquant: run with numpy made unimportable.
    script = f"""
import sys
sys.modules["numpy"] = None
import torch
import prefquant as pq
torch.manual_seed(0)
x = torch.randn(120, 6)
rq = pq.ResidualQuantizer(6, 2, 8)
rq.train()
rq(x)
rq.save_pretrained({str(tmp_path / "rq")!r})
loaded = pq.ResidualQuantizer.from_pretrained({str(tmp_path / "rq")!r})
assert torch.equal(loaded.encode(x), rq.encode(x))
assert "numpy" not in sys.modules or sys.modules["numpy"] is None
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
