"""ConvMixer parity with timm: parameter counts, state_dict loading, identical outputs."""
import pytest
import timm
import torch

from fastmix.model.convmixer import VARIANTS, ConvMixer, create_model, num_params

TIMM_VARIANTS = ["convmixer_1536_20", "convmixer_768_32", "convmixer_1024_20_ks9_p14"]
PUBLISHED_M = {"convmixer_1536_20": 51.63, "convmixer_768_32": 21.11, "convmixer_1024_20_ks9_p14": 24.38}


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_params_state_dict_and_outputs_match_timm(name):
    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    ours = create_model(name, num_classes=1000).eval()
    assert num_params(ours) == num_params(theirs)
    assert round(num_params(ours) / 1e6, 2) == PUBLISHED_M[name]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_any_num_classes_and_cifar_variant():
    model = create_model("convmixer_256_8", num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("convmixer_768_32", num_classes=100).head.out_features == 100
    assert isinstance(model, ConvMixer) and set(VARIANTS) >= set(TIMM_VARIANTS)
    with pytest.raises(ValueError, match="unknown ConvMixer variant"):
        create_model("convmixer_1_1")


def test_same_padding_keeps_resolution_and_channels_last_agrees():
    torch.manual_seed(0)
    model = ConvMixer(dim=16, depth=2, kernel=9, patch=4, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.stem(x).shape == model.blocks(model.stem(x)).shape == (2, 16, 8, 8)
    with torch.no_grad():
        expected = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, expected, rtol=1e-4, atol=1e-5)
