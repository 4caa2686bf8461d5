"""tools/evaluate.py on weights from elsewhere: a timm-format state_dict (.pth and .safetensors) of a
registered variant with a 1000-way ImageNet-1k head, evaluated on a subset whose classes are
ImageNet-1k WNIDs, scores against the right rows. (Reproducing the trainer's own top-1 from a
checkpoint is checked on the digits run in test_learning.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmix.data.convert import ConvertConfig, convert
from fastmix.data.synth import jpeg_bytes, photo
from fastmix.model.convmixer import create_model
from fastmix.train.weights import imagenet1k_wnids, load_weights

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import evaluate as evaluate_tool  # noqa: E402  (tools/evaluate.py)

ROWS = [7, 300, 999]       # ImageNet-1k labels of the subset's three classes
VAL = [2, 3, 5]            # val images per class: predicting class c scores VAL[c] / 10


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("in1k-subset")
    wnids = [imagenet1k_wnids()[r] for r in ROWS]
    rng = np.random.default_rng(0)
    for label, (wnid, n_val) in enumerate(zip(wnids, VAL)):
        for split, n in (("train", 1), ("val", n_val)):
            (root / "src" / split / wnid).mkdir(parents=True)
            for k in range(n):
                img = photo(rng, label, (48, 40))
                (root / "src" / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(jpeg_bytes(img))
    convert(ConvertConfig(str(root / "src"), str(root / "data"), num_classes=3, formats=("wds",), workers=1))
    return root / "data", wnids


def imagenet_state(decoy: bool) -> dict:
    """convmixer_256_8 with a 1000-way head that always answers ImageNet-1k label ROWS[1]; with
    `decoy`, label 2 scores higher still, so a head cut to its first rows answers class 2."""
    model = create_model("convmixer_256_8", num_classes=1000)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[ROWS[1]] = 50.0
        if decoy:
            model.head.bias[2] = 100.0
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_1000_way_head_is_mapped_onto_the_subset(subset, tmp_path, suffix):
    data, _ = subset
    path = tmp_path / f"convmixer_256_8{suffix}"
    state = imagenet_state(decoy=True)
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    result = evaluate_tool.main(["--checkpoint", str(path), "--model", "convmixer_256_8", "--data", str(data),
                                 "--image-size", "32", "--device", "cpu", "--workers", "1"])
    assert result["top1"] == pytest.approx(100 * VAL[1] / sum(VAL)) and result["top5"] == 100.0
    assert result["eval_images"] == sum(VAL) and "mapped onto the data's 3 WNIDs" in result["head"]


def test_mapped_logits_are_the_subset_columns(subset):
    _, wnids = subset
    classes = [{"index": i, "wnid": w} for i, w in enumerate(wnids)]
    full = create_model("convmixer_256_8", num_classes=1000).eval()
    path = Path(subset[0]) / "random.pth"
    torch.save(full.state_dict(), path)
    mapped, info = load_weights(str(path), classes, "convmixer_256_8")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mapped(x), full(x)[:, ROWS])
    assert info["kind"] == "state_dict" and mapped.head.out_features == 3


def test_timm_models_are_mapped_too(subset, monkeypatch):
    """timm:<name> downloads in real use; here timm builds the same architecture untrained."""
    import timm
    built = timm.create_model("convmixer_1024_20_ks9_p14", pretrained=False)
    weight, bias = built.get_classifier().weight.detach().clone(), built.get_classifier().bias.detach().clone()
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained: built if pretrained else None)
    _, wnids = subset
    model, info = load_weights("timm:convmixer_1024_20_ks9_p14", [{"wnid": w} for w in wnids])
    head = model.get_classifier()
    assert head.out_features == 3 and info["model"] == "convmixer_1024_20_ks9_p14"
    torch.testing.assert_close(head.weight, weight[ROWS])
    torch.testing.assert_close(head.bias, bias[ROWS])


def test_unmappable_heads_fail_with_the_reason(subset, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(imagenet_state(decoy=False), path)
    with pytest.raises(ValueError, match=r"w.pth: has a 1000-way ImageNet-1k head, but 1 classes of the data are "
                                         r"not ImageNet-1k WNIDs.*n99999999"):
        load_weights(str(path), [{"wnid": subset[1][0]}, {"wnid": "n99999999"}], "convmixer_256_8")
    torch.save(create_model("convmixer_256_8", num_classes=7).state_dict(), path)
    with pytest.raises(ValueError, match="its head has 7 classes and the data 3"):
        load_weights(str(path), [{"wnid": w} for w in subset[1]], "convmixer_256_8")
    with pytest.raises(ValueError, match="a plain state_dict; name its variant with --model"):
        load_weights(str(path), [{"wnid": w} for w in subset[1]])
    assert evaluate_tool.main(["--checkpoint", str(tmp_path / "none.pt"), "--data", str(subset[0])]) == 2
