import pytest
import torch
from safetensors.torch import save_file

from mindeye.errors import MindEyeError
from mindeye.models.convert import (
    convert_mindeye_v1_state_dict,
    expected_v1_shapes,
    load_mindeye_v1_checkpoint,
)
from mindeye.models.prior import DiffusionPrior, PriorNetwork
from naive_prior_ref import prior_forward

SCHEDULE = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "p2_loss_weight",
]  # fmt: skip


def authors_layout(nvox=15724, hidden=4096, tokens=257, dim=768, proj=2048, depth=6, heads=12, dh=64, T=100):
    """The authors' high-level checkpoint names and shapes, written out from their published layout."""
    s = {f"noise_scheduler.{n}": (T,) for n in SCHEDULE}
    s |= {"net.learned_query": (tokens, dim), "net.null_brain_embeds": (tokens, dim), "net.null_image_embed": (tokens, dim)}
    s |= {
        "net.to_time_embeds.0.1.net.0.0.weight": (2 * dim, dim), "net.to_time_embeds.0.1.net.0.0.bias": (2 * dim,),
        "net.to_time_embeds.0.1.net.1.0.weight": (2 * dim, 2 * dim), "net.to_time_embeds.0.1.net.1.0.bias": (2 * dim,),
        "net.to_time_embeds.0.1.net.2.weight": (dim, 2 * dim), "net.to_time_embeds.0.1.net.2.bias": (dim,),
        "net.causal_transformer.rel_pos_bias.relative_attention_bias.weight": (32, heads),
    }  # fmt: skip
    for i in range(depth):
        L = f"net.causal_transformer.layers.{i}"
        s |= {
            f"{L}.0.null_kv": (2, dh), f"{L}.0.norm.g": (dim,), f"{L}.0.to_q.weight": (heads * dh, dim),
            f"{L}.0.to_kv.weight": (2 * dh, dim), f"{L}.0.rotary_emb.freqs": (min(32, dh) // 2,),
            f"{L}.0.to_out.0.weight": (dim, heads * dh), f"{L}.0.to_out.1.g": (dim,), f"{L}.1.0.g": (dim,),
            f"{L}.1.1.weight": (8 * dim, dim), f"{L}.1.5.weight": (dim, 4 * dim),
        }  # fmt: skip
    s |= {"net.causal_transformer.norm.g": (dim,), "net.causal_transformer.project_out.weight": (dim, dim)}
    s |= {"voxel2clip.lin0.0.weight": (hidden, nvox), "voxel2clip.lin0.0.bias": (hidden,)}
    s |= {"voxel2clip.lin0.1.weight": (hidden,), "voxel2clip.lin0.1.bias": (hidden,)}
    for i in range(4):
        s |= {f"voxel2clip.mlp.{i}.0.weight": (hidden, hidden), f"voxel2clip.mlp.{i}.0.bias": (hidden,)}
        s |= {f"voxel2clip.mlp.{i}.1.weight": (hidden,), f"voxel2clip.mlp.{i}.1.bias": (hidden,)}
    s |= {"voxel2clip.lin1.weight": (tokens * dim, hidden), "voxel2clip.lin1.bias": (tokens * dim,)}
    for idx, shape in {0: (dim,), 2: (proj, dim), 3: (proj,), 5: (proj, proj), 6: (proj,), 8: (dim, proj)}.items():
        s |= {f"voxel2clip.projector.{idx}.weight": shape, f"voxel2clip.projector.{idx}.bias": (shape[0],)}
    return s


TINY = dict(nvox=50, hidden=32, tokens=20, dim=16, proj=24, depth=2, heads=2, dh=8)
TINY_SIZES = dict(hidden=32, tokens=20, dim=16, proj_hidden=24, depth=2, heads=2, dim_head=8, rotary_dim=8)


def meta_sd(**kw):
    return {k: torch.empty(s, device="meta") for k, s in authors_layout(**kw).items()}


def random_sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in authors_layout(**TINY).items()}
    freqs = 10000 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    for k in sd:
        if k.endswith("rotary_emb.freqs"):
            sd[k] = freqs.clone()  # one shared module in the reference: identical copies
    return sd


def test_layout_matches_expected_v1_shapes():
    assert expected_v1_shapes(15724) == authors_layout()
    assert expected_v1_shapes(50, **TINY_SIZES) == authors_layout(**TINY)


def test_full_size_keys_and_shapes_map_onto_our_model():
    sd = meta_sd()
    assert len(sd) == 119  # as in the published listing
    out = convert_mindeye_v1_state_dict(sd, n_voxels=15724)
    assert len(out) == len(sd) - 5  # six per-layer copies of the shared rotary freqs become one

    with torch.device("meta"):
        prior = DiffusionPrior(PriorNetwork())
    ours = {f"prior.{k}": tuple(v.shape) for k, v in prior.state_dict().items()}
    got_prior = {k: tuple(v.shape) for k, v in out.items() if k.startswith("prior.")}
    assert got_prior == ours

    expected_rest = {
        "backbone.stem.0.weight": (4096, 15724), "backbone.stem.0.bias": (4096,),
        "backbone.stem.1.weight": (4096,), "backbone.stem.1.bias": (4096,),
        "backbone.head.weight": (257 * 768, 4096), "backbone.head.bias": (257 * 768,),
    }  # fmt: skip
    for i in range(4):
        expected_rest |= {f"backbone.blocks.{i}.0.weight": (4096, 4096), f"backbone.blocks.{i}.0.bias": (4096,)}
        expected_rest |= {f"backbone.blocks.{i}.1.weight": (4096,), f"backbone.blocks.{i}.1.bias": (4096,)}
    for idx, shape in {0: (768,), 2: (2048, 768), 3: (2048,), 5: (2048, 2048), 6: (2048,), 8: (768, 2048)}.items():
        expected_rest |= {f"projector.net.{idx}.weight": shape, f"projector.net.{idx}.bias": (shape[0],)}
    assert {k: tuple(v.shape) for k, v in out.items() if not k.startswith("prior.")} == expected_rest


def test_zero_memory_stand_ins_are_accepted():
    sd = {k: torch.zeros(()).expand(s) for k, s in authors_layout(nvox=13039).items()}
    out = convert_mindeye_v1_state_dict(sd)
    assert out["backbone.stem.0.weight"].shape == (4096, 13039)


def test_values_land_on_the_right_tensors():
    sd = random_sd()
    out = convert_mindeye_v1_state_dict(sd, n_voxels=50, **TINY_SIZES)
    pairs = {
        "voxel2clip.lin0.0.weight": "backbone.stem.0.weight",
        "voxel2clip.lin0.1.bias": "backbone.stem.1.bias",
        "voxel2clip.mlp.2.1.weight": "backbone.blocks.2.1.weight",
        "voxel2clip.mlp.3.0.bias": "backbone.blocks.3.0.bias",
        "voxel2clip.lin1.weight": "backbone.head.weight",
        "voxel2clip.projector.5.weight": "projector.net.5.weight",
        "voxel2clip.projector.8.bias": "projector.net.8.bias",
        "noise_scheduler.posterior_mean_coef2": "prior.schedule.posterior_mean_coef2",
        "net.learned_query": "prior.net.pos_emb",
        "net.null_image_embed": "prior.net.null_image",
        "net.to_time_embeds.0.1.net.1.0.weight": "prior.net.time_mlp.2.weight",
        "net.causal_transformer.layers.1.0.to_kv.weight": "prior.net.blocks.1.attn.to_kv.weight",
        "net.causal_transformer.layers.1.0.to_out.1.g": "prior.net.blocks.1.attn.out_norm.weight",
        "net.causal_transformer.layers.0.1.5.weight": "prior.net.blocks.0.ff.proj_out.weight",
        "net.causal_transformer.norm.g": "prior.net.norm_out.weight",
    }
    for src, dst in pairs.items():
        assert out[dst] is sd[src], (src, dst)
    assert len({id(v) for v in out.values()}) == len(out)  # nothing mapped twice


def test_converted_prior_computes_the_reference_forward():
    sd = random_sd()
    sd = {k: (v * 0.1 if "to_" in k or "null_kv" in k else v) for k, v in sd.items()}  # keep activations tame
    out = convert_mindeye_v1_state_dict(sd, n_voxels=50, **TINY_SIZES)
    net = PriorNetwork(dim=16, depth=2, heads=2, dim_head=8, num_tokens=20, rotary_dim=8).double()
    prior = DiffusionPrior(net)
    prior.load_state_dict({k.removeprefix("prior."): v for k, v in out.items() if k.startswith("prior.")})
    prior.eval()

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 20, 16, generator=g, dtype=torch.float64) * 4
    brain = torch.randn(3, 20, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 41, 99])
    with torch.no_grad():
        for nb, ni in [(False, False), (True, False), (False, True), (True, True)]:
            ours = net(x, t, brain, float(nb), float(ni))
            ref = prior_forward(sd, x, t, brain, heads=2, null_brain=nb, null_image=ni)
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    for name in ["betas", "posterior_log_variance_clipped"]:
        assert torch.equal(getattr(prior.schedule, name), sd[f"noise_scheduler.{name}"].float())


def test_module_prefix_is_stripped():
    sd = {f"module.{k}": v for k, v in meta_sd().items()}
    assert "prior.net.pos_emb" in convert_mindeye_v1_state_dict(sd)


def test_wrong_voxel_count_names_subjects():
    with pytest.raises(MindEyeError) as e:
        convert_mindeye_v1_state_dict(meta_sd(), n_voxels=14278)
    msg = str(e.value)
    assert "15724" in msg and "subj01" in msg and "14278" in msg and "subj07 12682" in msg


def test_low_level_checkpoint_is_recognised():
    sd = {"lin0.0.weight": torch.zeros(4096, 15724), "upsampler.conv_in.weight": torch.zeros(1)}
    with pytest.raises(MindEyeError, match="low-level"):
        convert_mindeye_v1_state_dict(sd)


def test_random_dict_is_rejected():
    with pytest.raises(MindEyeError, match="not a MindEye v1 high-level checkpoint"):
        convert_mindeye_v1_state_dict({"conv.weight": torch.zeros(3)})
    with pytest.raises(MindEyeError, match="state dict"):
        convert_mindeye_v1_state_dict([1, 2])  # type: ignore[arg-type]


def test_missing_unexpected_and_misshapen_keys_are_listed():
    sd = meta_sd()
    del sd["net.causal_transformer.layers.3.1.5.weight"]
    sd["net.causal_transformer.layers.6.0.null_kv"] = torch.empty(2, 64, device="meta")
    with pytest.raises(MindEyeError) as e:
        convert_mindeye_v1_state_dict(sd)
    assert "missing keys: net.causal_transformer.layers.3.1.5.weight" in str(e.value)
    assert "unexpected keys: net.causal_transformer.layers.6.0.null_kv" in str(e.value)

    sd = meta_sd()
    sd["voxel2clip.projector.5.weight"] = torch.empty(2048, 768, device="meta")
    with pytest.raises(MindEyeError, match=r"voxel2clip.projector.5.weight \(2048, 768\) \(expected \(2048, 2048\)\)"):
        convert_mindeye_v1_state_dict(sd)


def test_differing_rotary_copies_are_rejected():
    sd = random_sd()
    sd["net.causal_transformer.layers.1.0.rotary_emb.freqs"] = sd["net.causal_transformer.layers.1.0.rotary_emb.freqs"] * 2
    with pytest.raises(MindEyeError, match="differ"):
        convert_mindeye_v1_state_dict(sd, **TINY_SIZES)


def test_load_checkpoint_formats(tmp_path):
    sd = {k: v.float() for k, v in random_sd().items()}
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model_state_dict": sd, "train_losses": [1.0, 0.5]}, wrapped)
    loaded = load_mindeye_v1_checkpoint(wrapped)
    assert set(loaded) == set(sd) and torch.equal(loaded["net.learned_query"], sd["net.learned_query"])
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    assert set(load_mindeye_v1_checkpoint(plain)) == set(sd)
    st = tmp_path / "w.safetensors"
    save_file(sd, str(st))
    loaded = load_mindeye_v1_checkpoint(st)
    assert torch.equal(loaded["voxel2clip.lin1.weight"], sd["voxel2clip.lin1.weight"])
    convert_mindeye_v1_state_dict(loaded, n_voxels=50, **TINY_SIZES)


class _Custom:
    pass


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(MindEyeError, match="not found"):
        load_mindeye_v1_checkpoint(tmp_path / "nope.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_state_dict": {"a": torch.zeros(1)}, "extra": _Custom()}, unsafe)
    with pytest.raises(MindEyeError, match="weights_only"):
        load_mindeye_v1_checkpoint(unsafe)
    not_sd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_sd)
    with pytest.raises(MindEyeError, match="does not hold a state dict"):
        load_mindeye_v1_checkpoint(not_sd)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MindEyeError, match="could not load"):
        load_mindeye_v1_checkpoint(junk)
