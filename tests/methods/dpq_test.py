"""Tests for the DPQ-G method (dpq_jax.methods.dpq): build, loss against the NumPy twins, the
stop-gradient switch, the two-stage optimizer, encode-once prefix search, one vs eight devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from dpq_jax import config_lib, registry
from dpq_jax.losses import reference as loss_ref
from dpq_jax.methods import dpq as method
from dpq_jax.quantizers import reference as ref

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES, LEVELS, K, D = 5, 3, 4, 6
METHOD = method.METHOD


def _model_cfg(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            backbone=dict(name="cnn_small", widths=(4,)),
            features=8,
            embedding_dim=D,
            quantizer=dict(
                num_levels=LEVELS, codebook_size=K, assign="cosine", gamma=1.0, init_std=0.5
            ),
            label_embeddings="",
            dtype="float32",
        )
    )
    cfg.update(overrides)
    return cfg


def _loss_cfg(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            semantic_weight=1.0,
            classification_weight=0.1,
            tau=1.0,
            mu=1.0,
            nu=0.1,
            stop_grad_features=True,
        )
    )
    cfg.update(overrides)
    return cfg


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
        label=rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    )


def _build(**overrides):
    return METHOD.build(
        _model_cfg(**overrides), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )


# --- sizes and construction -----------------------------------------------------------------


def test_registry_and_code_lengths_are_the_prefixes():
    assert registry.get("method", "dpq") is METHOD
    assert METHOD.code_type == "pq" and METHOD.default_query_side == "raw"
    assert METHOD.code_lengths(_model_cfg()) == (2, 4, 6)
    paper = dict(quantizer=dict(num_levels=4, codebook_size=256))
    assert METHOD.code_lengths(paper) == (8, 16, 24, 32)
    with pytest.raises(ValueError, match=r"\[2, 256\]"):
        METHOD.code_lengths(dict(quantizer=dict(num_levels=2, codebook_size=512)))
    with pytest.raises(ValueError, match="num_levels"):
        METHOD.code_lengths(dict(quantizer=dict(num_levels=0, codebook_size=4)))


def test_build_learned_or_file_label_embeddings(tmp_path):
    model = _build()
    assert isinstance(model.label_embeddings, nnx.Param)
    assert model.label_embeddings[...].shape == (NUM_CLASSES, D)
    assert model.quantizer.codebooks[...].shape == (LEVELS, K, D)
    vectors = np.random.default_rng(0).standard_normal((NUM_CLASSES, D)).astype(np.float32)
    np.save(tmp_path / "vec.npy", vectors)
    np.savetxt(tmp_path / "vec.txt", vectors)
    for name in ("vec.npy", "vec.txt"):
        fixed = _build(label_embeddings=str(tmp_path / name))
        assert isinstance(fixed.label_embeddings, method.LabelEmbeddings)
        np.testing.assert_allclose(np.asarray(fixed.label_embeddings[...]), vectors, rtol=1e-6)
        params = nnx.state(fixed, nnx.Param)
        assert "label_embeddings" not in params  # not trained
    np.save(tmp_path / "bad.npy", vectors[:3])
    with pytest.raises(ValueError, match=r"needs \[C, D\] = \[5, 6\]"):
        _build(label_embeddings=str(tmp_path / "bad.npy"))
    with pytest.raises(ValueError, match="no file"):
        _build(label_embeddings=str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="assign must be one of"):
        _build(quantizer=dict(num_levels=2, codebook_size=4, assign="dot"))


def test_orthogonal_label_embeddings_fix_every_margin_at_one():
    model = _build(label_embeddings="orthogonal")
    assert isinstance(model.label_embeddings, method.LabelEmbeddings)  # not trained
    v = np.asarray(model.label_embeddings[...], np.float64)
    norms = np.linalg.norm(v, axis=1)
    cos = (v @ v.T) / np.outer(norms, norms)
    margins = 1.0 - cos  # δ_ij of the DVSQ loss
    np.testing.assert_allclose(margins, 1.0 - np.eye(NUM_CLASSES), atol=1e-6)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="embedding_dim >= the number of classes"):
        _build(label_embeddings="orthogonal", embedding_dim=NUM_CLASSES - 1)
    with pytest.raises(ValueError, match="sets itself"):
        _build(backbone=dict(name="cnn_small", features=3))


# --- loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("assign,gamma", [("cosine", 1.0), ("l2", 2.0)])
def test_loss_matches_the_numpy_twins(assign, gamma):
    model = _build(
        quantizer=dict(num_levels=LEVELS, codebook_size=K, assign=assign, gamma=gamma, init_std=0.5)
    )
    model.train()
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    loss_cfg = _loss_cfg(semantic_weight=0.7, tau=2.0, mu=0.5, nu=0.3)
    loss, aux = jax.jit(lambda m, b: METHOD.loss_fn(m, b, loss_cfg))(model, batch)
    # Oracles from the trunk (train-mode BatchNorm depends only on the batch).
    trunk = np.asarray(model.backbone(batch["image"]), np.float64)
    kernel, bias = (np.asarray(v[...], np.float64) for v in (model.embed.kernel, model.embed.bias))
    x = np.tanh(trunk @ kernel + bias)
    logits = trunk @ np.asarray(model.classifier.kernel[...]) + np.asarray(
        model.classifier.bias[...]
    )
    labels = np.asarray(batch["label"])
    vectors = np.asarray(model.label_embeddings[...])
    books = np.asarray(model.quantizer.codebooks[...])
    semantic = loss_ref.adaptive_margin_loss(x, vectors, labels)
    classification = loss_ref.classification_loss(logits, labels)
    q = ref.progressive_quantize(x, books, assign, gamma)
    parts = loss_ref.progressive_distortions(x, q["soft"], q["hard"])
    quant = 2.0 * (parts["soft"] + 0.5 * parts["hard"] + 0.3 * parts["jcl"])
    np.testing.assert_allclose(float(aux["loss_semantic"]), semantic, rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_classification"]), classification, rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_soft_dist"]), parts["soft"], rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_hard_dist"]), parts["hard"], rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_jcl"]), parts["jcl"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        float(loss), 0.7 * semantic + 0.1 * classification + quant, rtol=1e-4
    )
    for level in range(LEVELS):
        err = np.mean((x - q["hard"][:, level]) ** 2)
        np.testing.assert_allclose(float(aux[f"hard_dist_{level + 1}level"]), err, rtol=1e-4)
    usage = np.mean([len(set(q["codes"][:, i].tolist())) / K for i in range(LEVELS)])
    np.testing.assert_allclose(float(aux["code_usage"]), usage, rtol=1e-6)


def test_loss_rejects_bad_labels_eagerly():
    model = _build()
    batch = _batch(4)
    batch["label"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        METHOD.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, _loss_cfg())
    with pytest.raises(ValueError, match="stop_grad_features"):
        cfg = _loss_cfg().to_dict()
        del cfg["stop_grad_features"]
        METHOD.loss_fn(model, _batch(4), cfg)


def _grads(model, batch, loss_cfg):
    return jax.jit(lambda m, b: nnx.grad(lambda m: METHOD.loss_fn(m, b, loss_cfg)[0])(m))(
        model, batch
    )


def _norms(grads):
    """Gradient norm per top-level part of the model (backbone, embed, quantizer, ...)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        part = path[0].key
        out[part] = out.get(part, 0.0) + float(np.sum(np.asarray(leaf, np.float64) ** 2))
    return {k: np.sqrt(v) for k, v in out.items()}


def test_stop_grad_features_stops_the_quantization_gradient_to_the_backbone():
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    quant_only = dict(semantic_weight=0.0, classification_weight=0.0)
    model = _build()
    model.train()
    stopped = _norms(_grads(model, batch, _loss_cfg(**quant_only)))
    assert stopped["backbone"] == 0.0 and stopped["embed"] == 0.0
    assert stopped["quantizer"] > 0.0
    end_to_end = _norms(_grads(model, batch, _loss_cfg(stop_grad_features=False, **quant_only)))
    assert end_to_end["backbone"] > 0.0 and end_to_end["embed"] > 0.0
    np.testing.assert_allclose(end_to_end["quantizer"], stopped["quantizer"], rtol=1e-5)
    # With every loss on, the backbone's gradient is exactly that of L_S + lambda L_C, and the
    # codebooks' that of the quantization loss (the reference's two separate gradients).
    full = _grads(model, batch, _loss_cfg())
    feature_only = _grads(model, batch, _loss_cfg(tau=0.0))
    for part in ("backbone", "embed", "classifier", "label_embeddings"):
        for a, b in zip(
            jax.tree.leaves(full[part]),
            jax.tree.leaves(feature_only[part]),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    assert _norms(feature_only)["quantizer"] == 0.0


# --- training -------------------------------------------------------------------------------


def test_one_vs_eight_devices(cpu_devices, method_checks):
    model = _build()
    model.train()
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
    step = method_checks.train_step(METHOD, _loss_cfg(stop_grad_features=False))
    method_checks.check_one_vs_eight_devices(step, graphdef, state, _batch(), cpu_devices)


def _two_stage_cfg(start):
    return method.two_stage_optim(
        config_lib.optimizer("sgd", lr=0.05, schedule="constant"),
        config_lib.optimizer("adam", lr=0.01, schedule="constant"),
        codebook_start_step=start,
    )


def test_two_stage_optimizer_freezes_the_codebooks_until_their_start_step(method_checks):
    model = _build()
    model.train()
    optimizer, schedule = METHOD.make_optimizer(model, _two_stage_cfg(2), total_steps=5)
    assert float(schedule(0)) == pytest.approx(0.05)  # the encoder's, for logging
    graphdef, state = nnx.split((model, optimizer))
    step = method_checks.train_step(METHOD, _loss_cfg())

    def parts(state):
        m, _ = nnx.merge(graphdef, state)
        return np.asarray(m.quantizer.codebooks[...]), np.asarray(m.embed.kernel[...])

    books, kernel = parts(state)
    moves = []
    for _ in range(4):
        state = step(graphdef, state, _batch())[0]
        new_books, new_kernel = parts(state)
        moves.append((np.abs(new_books - books).max(), np.abs(new_kernel - kernel).max()))
        books, kernel = new_books, new_kernel
    assert [m[0] == 0.0 for m in moves] == [True, True, False, False]  # steps 0, 1 frozen
    assert all(m[1] > 0.0 for m in moves)  # the encoder trains from step 0
    # The codebooks' Adam counts its own steps: its first update is lr * sign(g).
    np.testing.assert_allclose(moves[2][0], 0.01, rtol=1e-3)
    with pytest.raises(ValueError, match="codebook_start_step"):
        METHOD.make_optimizer(model, _two_stage_cfg(5), total_steps=5)


def test_joint_optimizer_is_the_default_chain():
    from dpq_jax import optim

    model = _build()
    cfg = config_lib.optimizer("adam", lr=1e-3, schedule="constant")
    optimizer, _ = METHOD.make_optimizer(model, cfg, total_steps=10)
    default, _ = optim.make_nnx_optimizer(model, cfg, 10)
    assert jax.tree.structure(nnx.state(optimizer.opt_state)) == jax.tree.structure(
        nnx.state(default.opt_state)
    )


# --- encoding and prefix search -------------------------------------------------------------


def _encoded():
    model = _build()
    model.eval()
    images = jnp.asarray(_batch(16, seed=1)["image"])
    database = jax.device_get(jax.jit(METHOD.encode_fn)(model, images))
    queries = jax.device_get(jax.jit(METHOD.query_fn)(model, jnp.asarray(_batch(4, 2)["image"])))
    return model, database, queries


def test_encode_once_and_every_prefix_is_a_head(method_checks):
    model, database, queries = _encoded()
    (codes,) = database["codes"]
    assert codes.dtype == np.uint8 and codes.shape == (16, LEVELS)
    books = np.asarray(model.quantizer.codebooks[...])
    want = ref.progressive_quantize(database["feats"], books, "cosine", 1.0)
    np.testing.assert_array_equal(codes, want["codes"])
    np.testing.assert_allclose(
        queries["soft"],
        ref.progressive_quantize(queries["feats"], books, "cosine", 1.0)["soft"],
        rtol=1e-5,
        atol=1e-6,
    )
    params = jax.device_get(METHOD.code_params(model))
    assert [p.shape for p in params] == [(level, K, D) for level in range(1, LEVELS + 1)]
    lengths = METHOD.code_lengths(_model_cfg())
    method_checks.check_prefix_heads(METHOD, database, codes, params, lengths, "raw")


@pytest.mark.parametrize("query_side", ["raw", "soft_quantized"])
def test_prefix_scores_equal_brute_force_of_the_first_levels(query_side, method_checks):
    model, database, queries = _encoded()
    params = jax.device_get(METHOD.code_params(model))
    books = np.asarray(model.quantizer.codebooks[...], np.float64)
    for head in range(LEVELS):
        codes = database["codes"][0][:, : head + 1]
        vectors = METHOD.query_vectors(
            queries, head=head, codebooks=params[head], query_side=query_side
        )
        want_vectors = queries["feats"] if query_side == "raw" else queries["soft"][:, head]
        np.testing.assert_array_equal(vectors, np.asarray(want_vectors, np.float32))
        brute = np.asarray(vectors, np.float64) @ ref.reconstruct_progressive(codes, books).T
        luts = method_checks.check_prefix_search(
            METHOD, queries, database, params, head, query_side, brute
        )
        assert luts.shape == (4, head + 1, K)
    with pytest.raises(ValueError, match="query_side"):
        METHOD.query_tables(queries, head=0, codebooks=params[0], query_side="l2")


# --- config groups ---------------------------------------------------------------------------
def test_model_and_loss_groups_are_the_paper_recipe():
    args = dict(levels=4, codebook_size=256, assign="cosine", gamma=1.0, label_embeddings="")
    model = method.model_config({"name": "cnn_small"}, features=512, **args)
    # METHODS §2: x = tanh(fc8) with D = 300, L = 4 levels of K = 256: 8/16/24/32-bit prefixes.
    assert (model.features, model.embedding_dim, model.quantizer.init_std) == (512, 300, 0.01)
    assert METHOD.code_lengths(model) == (8, 16, 24, 32)
    tiny = method.model_config({"name": "cnn_small"}, features=512, runlocal=True, **args)
    assert (tiny.features, tiny.embedding_dim, tiny.quantizer.codebook_size) == (16, 8, 16)
    assert METHOD.code_lengths(tiny) == (4, 8, 12, 16)
    # λ = 0.1 (classification), μ = 1 (hard distortion), ν = 0.1 (joint central loss).
    assert method.loss_config(False).to_dict() == {
        "semantic_weight": 1.0,
        "classification_weight": 0.1,
        "tau": 1.0,
        "mu": 1.0,
        "nu": 0.1,
        "stop_grad_features": False,
    }


def test_schedule_optim():
    encoder = config_lib.optimizer("adamw", lr=3e-3, schedule="cosine")
    assert method.schedule_optim("joint", encoder, total_steps=300) is encoder
    two = method.schedule_optim("two_stage", encoder, total_steps=301)
    assert two.name == method.TWO_STAGE and two.encoder is encoder
    assert two.codebook_start_step == 150  # half way
    assert (two.codebook.name, two.codebook.lr, two.codebook.schedule) == ("adam", 1e-3, "constant")
    with pytest.raises(ValueError, match="schedule must be 'joint' or 'two_stage', got 'x'"):
        method.schedule_optim("x", encoder, total_steps=300)
