"""One-shot tuning of an inflated model on one clip (paper Sec. 3.3), the ComfyUI way.

- The clip's latents are encoded once, by the graph; text embeddings come from the conditioning.
- Each trainable tensor gets a trainable copy in float32 (or a low-rank delta), spliced into the
  forward pass by a ComfyUI weight wrapper on a training clone. Checkpoint weights are inference
  tensors, which autograd cannot save for backward: when the training clone loads, an ON_LOAD
  callback swaps each for an ordinary tensor over the same memory (no copy), and unloading the clone
  puts the shared model's own tensors back.
- The loop runs as a ComfyUI sampler, so ComfyUI loads the models, processes the conditioning
  (SDXL's pooled and size conds too) and records the frame count. The model is queried at a
  uniformly drawn training timestep, and the loss is the paper's: MSE between the noise and the
  predicted noise (the v target for v-prediction models).
- The result is a clone carrying the learned changes as "diff" weight patches (tuned.add_deltas):
  the input model is untouched, and LoRA and other patches stack.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.utils

from . import checkpointing, checks, differentiable, inflate, tune_cache, tuned, windows

PRESETS = {
    "paper (attn1.to_q, attn2.to_q, attn_temp)": ("attn1.to_q", "attn2.to_q", "attn_temp"),
    "temporal only (attn_temp)": ("attn_temp",),
    "paper + attn1.to_k, attn1.to_v": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn_temp"),
    "paper, LoRA rank 16 (small files)": ("attn1.to_q", "attn2.to_q", "attn_temp"),
}
LORA_PRESET = "paper, LoRA rank 16 (small files)"
LORA_RANK = 16
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("AdamW", "AdamW 8-bit")
SWAPS_ATTACHMENT = "tuneavideo.ordinary_weights"
LOAD_WITHOUT_GRAD_KEY = "tuneavideo.load_without_grad"


class TuneError(ValueError):
    pass


@dataclass
class TuneSettings:
    steps: int = 500
    learning_rate: float = 3e-5
    seed: int = 0
    trainable: str = next(iter(PRESETS))
    gradient_checkpointing: bool = True
    checkpoint_blocks: str = checkpointing.ALL_BLOCKS  # which blocks, when checkpointing is on
    precision: str = "auto"
    optimizer: str = "AdamW"
    window_frames: int = 0  # frames per optimiser step (windows.py); 0 = the whole clip
    # The official optimiser settings.
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self):
        for name, choices in (("trainable", PRESETS), ("checkpoint_blocks", checkpointing.SCOPES),
                              ("precision", PRECISIONS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in choices:
                raise TuneError(f"unknown {name} {getattr(self, name)!r}; choose one of {list(choices)}.")
        checks.check_finite("learning_rate", self.learning_rate, TuneError)
        if self.learning_rate <= 0:
            raise TuneError(f"learning_rate must be above 0, not {self.learning_rate}; the paper uses 3e-5.")
        try:
            windows.check(self.window_frames)
        except windows.WindowError as e:
            raise TuneError(str(e)) from e


@dataclass
class TuneResult:
    model: object
    losses: list[float] = field(default_factory=list)


def trainable_names(patcher, preset: str) -> list[str]:
    """The tensors a preset trains, in inflated-UNet naming (see tuned.py)."""
    modules = PRESETS[preset]
    names = []
    for path, block, _ in inflate.transformer_blocks(patcher.model.diffusion_model):
        for module in modules:
            if module == "attn_temp":
                layer = inflate.temporal_layers(patcher).layer(path).attn_temp
                names += [f"{tuned.UNET_PREFIX}{path}.attn_temp.{k}" for k in layer.state_dict()]
            else:
                names.append(f"{tuned.UNET_PREFIX}{path}.{module}.weight")
    return names


class FullCopy(torch.nn.Module):
    """Trains the whole tensor, as the official code does (weight decay included).

    It owns `value` (a float32 copy) and keeps no copy of the start: the delta is taken against the
    start recomputed after training, which saves one tensor's memory per trained tensor.
    """

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = torch.nn.Parameter(value)

    def forward(self, weight):
        return self.value.to(weight.dtype)

    def delta(self, start: torch.Tensor) -> torch.Tensor:
        return self.value.detach() - start.to(self.value.device)  # the base may be offloaded by now


class LowRankDelta(torch.nn.Module):
    """Trains a rank-r change B @ A of a matrix (biases and vectors train in full)."""

    def __init__(self, value: torch.Tensor, rank: int, generator: torch.Generator):
        super().__init__()
        out_features, in_features = value.shape
        self.down = torch.nn.Parameter(torch.empty(rank, in_features))
        torch.nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.up = torch.nn.Parameter(torch.zeros(out_features, rank))  # the change starts at zero

    def forward(self, weight):
        return weight + (self.up @ self.down).to(weight.dtype)

    def delta(self, start: torch.Tensor | None = None) -> torch.Tensor:
        return (self.up @ self.down).detach()


# bf16 autocast must beat fp32 on the probe's kernels by this factor to be "auto"'s choice on a CPU: a tune
# step also pays autocast's weight casts (a quarter of an AMX bf16 step), which the kernels do not show.
BF16_SPEEDUP_NEEDED = 1.5


def bf16_kernel_speedup() -> float:
    """fp32 time / bf16 time of a 3x3 convolution and a matmul at SD1.5's first block width (best of 3).

    About 0.1 to 0.3 s on 2 CPU cores, warm-up included (oneDNN builds its kernels on the first call)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1024, 1024, generator=generator)
    x = torch.randn(2, 320, 32, 32, generator=generator)
    w = torch.randn(320, 320, 3, 3, generator=generator)

    def best_seconds(dtype) -> float:
        args = [t.to(dtype) for t in (a, b, x, w)]

        def run():
            args[0] @ args[1]
            torch.nn.functional.conv2d(args[2], args[3], padding=1)

        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


@functools.cache
def cpu_bf16_pays() -> bool:
    """Whether this CPU runs bf16 clearly faster than fp32, measured once per process.

    Its flags do not tell: AMX runs bf16 several times faster, and so did an AMD EPYC with AVX512-BF16
    and no AMX (a 2048² matmul at 781 against 180 GFLOP/s), while a Xeon with AVX512-BF16 and no AMX ran
    bf16 at half its fp32 rate (bench/NOTES.md)."""
    speedup = bf16_kernel_speedup()
    logging.info("Tune-A-Video: bf16 runs this CPU's UNet kernels %.2fx as fast as fp32; precision auto "
                 "tunes in %s.", speedup, "bf16" if speedup >= BF16_SPEEDUP_NEEDED else "fp32")
    return speedup >= BF16_SPEEDUP_NEEDED


def _autocast_dtype(precision: str, device: torch.device):
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        # Measured (bench/NOTES.md): a bf16 tune step takes 0.52-0.55x the fp32 one where bf16 kernels
        # are fast; where they are not, bf16 runs slower than fp32, and fp32 is exact.
        if device.type == "cpu" and cpu_bf16_pays():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_optimizer(params, settings: TuneSettings):
    """The optimiser over the adapters' float32 parameters; its state is float32 like them."""
    name = settings.optimizer
    kwargs = dict(lr=settings.learning_rate, betas=settings.betas, weight_decay=settings.weight_decay,
                  eps=settings.eps)
    if name == "AdamW 8-bit":
        try:
            import bitsandbytes
        except ImportError as e:
            raise TuneError("the AdamW 8-bit optimizer needs bitsandbytes (pip install bitsandbytes); "
                            "choose AdamW instead.") from e
        return bitsandbytes.optim.AdamW8bit(params, **kwargs)
    try:
        # The fused kernel: the same update, about 3x faster on CPU and without foreach temporaries.
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # a device without a fused AdamW kernel
        return torch.optim.AdamW(params, **kwargs)


def check_inputs(patcher, positive, latents: torch.Tensor) -> None:
    unet = patcher.model.diffusion_model
    checks.check_latents(unet, latents, TuneError, min_frames=2)
    checks.check_conditioning(unet, positive, TuneError, "positive conditioning")


class _TrainingLoop(comfy.samplers.Sampler):
    """Runs the optimisation inside ComfyUI's sampling machinery (as ComfyUI's own trainer does)."""

    def __init__(self, adapters, settings: TuneSettings, autocast_dtype, on_step):
        self.adapters = adapters
        self.settings = settings
        self.autocast_dtype = autocast_dtype
        self.on_step = on_step
        self.losses: list[float] = []

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        s = self.settings
        model_sampling = model_wrap.inner_model.model_sampling
        v_prediction = isinstance(model_sampling, comfy.model_sampling.V_PREDICTION)
        device = latent_image.device
        generator = torch.Generator(device="cpu").manual_seed(s.seed)
        params = [p for a in self.adapters.values() for p in a.parameters()]
        optimizer = make_optimizer(params, s)
        scaler = torch.amp.GradScaler(device.type) if self.autocast_dtype == torch.float16 else None
        clip = latent_image
        window_frames = windows.effective(s.window_frames, clip.shape[0])
        # Its own stream, so that the noise and timestep stream is the whole-clip path's.
        window_generator = torch.Generator(device="cpu").manual_seed(s.seed)
        transformer_options = extra_args["model_options"].setdefault("transformer_options", {})
        for step in range(s.steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            window = windows.training_window(clip.shape[0], window_frames, window_generator) if window_frames else None
            x0 = clip if window is None else window.get_tensor(clip)
            if window is not None:  # the inflated model reads the window video's layout here, as in sampling
                transformer_options[windows.CONTEXT_WINDOW] = window
            t = int(torch.randint(0, len(model_sampling.sigmas), (1,), generator=generator))
            eps = torch.randn(x0.shape, generator=generator).to(device)
            sigma = model_sampling.sigmas[t].to(device).clone().expand(x0.shape[0])  # not an inference tensor
            x = model_sampling.noise_scaling(sigma, eps, x0)
            with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                denoised = model_wrap(x, sigma, **extra_args)
            sigma4 = sigma.reshape(-1, 1, 1, 1)
            predicted_eps = (x - denoised.float()) / sigma4
            if v_prediction:  # v = sqrt(a) eps - sqrt(1-a) x0, with a = 1 / (1 + sigma^2)
                alpha = 1 / (1 + sigma4 ** 2)
                prediction = alpha.sqrt() * predicted_eps - (1 - alpha).sqrt() * denoised.float()
                target = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
            else:
                prediction, target = predicted_eps, eps
            if window is not None:  # the anchors are context, not training frames
                prediction, target = window.strip(prediction), window.strip(target)
            loss = torch.nn.functional.mse_loss(prediction, target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if step == 0:
                _check_gradients(self.adapters)
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            self.losses.append(float(loss.detach()))
            if self.on_step:
                self.on_step(step + 1, s.steps, self.losses[-1])
        transformer_options.pop(windows.CONTEXT_WINDOW, None)
        optimizer.zero_grad(set_to_none=True)  # the gradients are not needed past the last step
        return latent_image


def _check_gradients(adapters: dict) -> None:
    """After the first backward pass: AdamW would silently skip a tensor that got no gradient."""
    missing = [name for name, adapter in adapters.items() if any(p.grad is None for p in adapter.parameters())]
    if missing:
        raise TuneError(f"{len(missing)} of the {len(adapters)} chosen tensors got no gradient (the first: "
                        f"{missing[0]}). " + differentiable.no_backward_hint())


def tune(patcher, positive, latent: dict, settings: TuneSettings, on_step=None,
         cache_dir: str | None = None) -> TuneResult:
    """Tune an (inflated, or to be inflated) model on the clip `latent` with its source prompt.

    `on_step(step, steps, loss)` is called after every optimiser step. With `cache_dir`, the tuned
    weights are looked up there first, and stored there after tuning.
    """
    model = inflate.inflate(patcher)
    latents = latent["samples"]
    check_inputs(model, positive, latents)
    if model.model_options.get("context_handler") is not None:
        raise TuneError("the model carries core context windows (a Context Windows node before One-Shot Tune); "
                        "tuning windows with its own window_frames input. Move the Context Windows node after "
                        "One-Shot Tune.")
    autocast = _autocast_dtype(settings.precision, torch.device(model.load_device))
    key = tune_cache.cache_key(model, positive, latent, settings, autocast) if cache_dir else None
    expected = tune_cache.expected_entry(model, trainable_names(model, settings.trainable)) if key else None
    cached = tune_cache.load(cache_dir, key, expected, settings.steps) if key else None
    if cached is not None:
        deltas, losses = cached
        logging.info("Tune-A-Video: One-Shot Tune found its result in the cache (%s); skipping %d steps.",
                     key, settings.steps)
    else:
        deltas, losses = _train(model, positive, latents, settings, autocast, on_step)
        if key:  # a failed write only warns: the finished tune is kept
            tune_cache.store(cache_dir, key, deltas, losses)
    metadata = {"steps": settings.steps, "learning_rate": settings.learning_rate, "seed": settings.seed,
                "trainable": settings.trainable, "frames": int(latents.shape[0]),
                "window_frames": windows.effective(settings.window_frames, int(latents.shape[0]))}
    return TuneResult(tuned.add_deltas(model, deltas, metadata), losses)


def _train(model, positive, latents, settings: TuneSettings, autocast_dtype, on_step):
    names = trainable_names(model, settings.trainable)
    with torch.inference_mode(False), torch.enable_grad():
        # Fresh (non-inference) copies: autograd saves them.
        positive = [[c.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in o.items()}]
                    for c, o in positive]
        latents = latents.clone()
        adapters = make_adapters(model, names, settings)
        training = _training_clone(model, adapters,
                                   settings.checkpoint_blocks if settings.gradient_checkpointing else None)
        device = training.load_device
        for adapter in adapters.values():
            adapter.to(device)
        loop = _TrainingLoop(adapters, settings, autocast_dtype, on_step)
        guider = comfy.samplers.CFGGuider(training)
        guider.set_conds(positive, [])
        guider.set_cfg(1.0)
        try:
            guider.sample(torch.zeros_like(latents), latents, loop, torch.ones(2), seed=settings.seed,
                          disable_pbar=True)
        finally:
            unload_clone(training)
        full = [name for name, adapter in adapters.items() if isinstance(adapter, FullCopy)]
        start = tuned.effective_weights(model, full)  # bit-identical to the values training began from
        deltas = {name: adapter.delta(start.get(name)).cpu() for name, adapter in adapters.items()}
        return deltas, loop.losses


def make_adapters(model, names, settings: TuneSettings) -> dict:
    """One trainable adapter per tensor, in float32 whatever the UNet's storage dtype: the
    effective weights are read as float32, and a bf16 or fp8 copy would round away updates of
    the paper's learning rate (3e-5 of a weight is below bf16's resolution)."""
    generator = torch.Generator().manual_seed(settings.seed)
    adapters = {}
    for name, value in tuned.effective_weights(model, names).items():
        if settings.trainable == LORA_PRESET and value.ndim == 2:
            adapters[name] = LowRankDelta(value, LORA_RANK, generator)
        else:
            adapters[name] = FullCopy(value)
    return adapters


def _training_clone(model, adapters: dict, checkpoint_blocks: str | None):
    """A clone whose forward pass uses the adapters, and only ordinary (non-inference) weights.

    `checkpoint_blocks`: a checkpointing scope (checkpointing.SCOPES), or None for no checkpointing."""
    training = gradient_clone(model)
    layers = inflate.temporal_patcher(training)
    for name, adapter in adapters.items():
        if tuned.is_temporal(name):
            layers.add_weight_wrapper(name[len(tuned.UNET_PREFIX):], adapter)
        else:
            training.add_weight_wrapper(name, _scaled_fp8_aware(training, name, adapter))
    if checkpoint_blocks is not None:
        checkpointing.add_checkpointing(training, checkpoint_blocks)
    return training


class _ScaledWeightAdapter:
    """An adapter of a scaled fp8 layer (ComfyUI 0.3's `scaled_fp8_ops`), which multiplies its weight by
    `scale_weight` after the weight wrappers ran: the adapter is handed the real weight and hands its result back
    in the layer's scaled units. The scale is read when called: while the clone is loaded it is an ordinary
    tensor that autograd can save (`_ordinary_weights`)."""

    def __init__(self, layer, adapter):
        self.layer, self.adapter = layer, adapter

    def __call__(self, weight):
        scale = self.layer.scale_weight.to(weight)
        return self.adapter(weight * scale) / scale


def _scaled_fp8_aware(patcher, name: str, adapter):
    path, _, attribute = name.rpartition(".")
    layer = comfy.utils.get_attr(patcher.model, path)
    if attribute == "weight" and differentiable.is_scaled_fp8(layer):
        return _ScaledWeightAdapter(layer, adapter)
    return adapter


def gradient_clone(model):
    """A clone of `model` (and of its temporal layers, if inflated) that autograd can run backward through.

    The weights get no gradients; while the clone is loaded they are ordinary tensors (`_ordinary_weights`),
    until `unload_clone`. Its attention and fp8 layers have a backward pass whatever ComfyUI was launched with
    (differentiable.py). One-Shot Tune adds its adapters to it; null-text inversion differentiates through it
    with respect to a text embedding."""
    clone = model.clone()
    owners = [clone]
    if inflate.is_inflated(model):
        layers = inflate.temporal_patcher(model).clone()
        clone.set_additional_models(inflate.KEY, [layers])
        owners.append(layers)
    differentiable.make_differentiable(clone)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, LOAD_WITHOUT_GRAD_KEY,
                               _load_without_grad)
    for owner in owners:
        swaps = []  # this clone's own record: clones of a patcher share its attachments' objects
        owner.set_attachments(SWAPS_ATTACHMENT, swaps)
        owner.add_callback(comfy.patcher_extension.CallbacksMP.ON_LOAD,
                           lambda patcher, *_, swaps=swaps: _ordinary_weights(patcher, swaps))
    return clone


def _load_without_grad(executor, *args, **kwargs):
    """PREPARE_SAMPLING wrapper: the sampler loads the gradient clone with autograd off.

    Loading computes weight patches (a LoRA, tuned deltas, fp8 stochastic rounding), and their in-place
    and out= operations refuse weights that require grad; none of it is to be differentiated."""
    with torch.no_grad():
        return executor(*args, **kwargs)


def make_weights_ordinary(patcher) -> None:
    """`_ordinary_weights` for `patcher` and its additional models (the temporal layers), now.

    ON_LOAD does not fire where ComfyUI finds the same weights already loaded by another clone (a
    gradient clone adds no weight patches), so a caller that runs backward calls this once loaded."""
    for owner in (patcher, *patcher.get_nested_additional_models()):
        _ordinary_weights(owner, owner.get_attachment(SWAPS_ATTACHMENT))


def _ordinary_weights(patcher, swaps: list) -> None:
    """Replace inference-tensor parameters by ordinary tensors over the same memory, recorded in `swaps`.

    Loading under ComfyUI's inference mode leaves the weights as inference tensors, and autograd
    cannot save those for backward. An ordinary tensor set on the same storage is saved without a copy
    of the UNet (a copy would double its memory wherever something else still holds the original), and
    the shared model's values stay the same. Tensor subclasses (quantised weights) get a copy.
    """
    with torch.inference_mode(False):
        for module in patcher.model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if not param.is_inference():
                    continue
                if type(param.data) is torch.Tensor:
                    view = torch.empty(0, dtype=param.dtype, device=param.device).set_(
                        param.untyped_storage(), param.storage_offset(), param.size(), param.stride())
                else:
                    view = param.clone()
                ordinary = torch.nn.Parameter(view, requires_grad=False)
                setattr(module, name, ordinary)
                swaps.append((module, name, param, ordinary))


def _restore_weights(swaps: list) -> None:
    """Give the shared model its own parameters back where an ordinary stand-in is still in place.

    Where unloading moved the stand-in to the offload device, the moved tensor is the weight now, as
    ComfyUI would have left the original, and it stays."""
    for module, name, original, ordinary in swaps:
        if getattr(module, name, None) is ordinary and ordinary.device == original.device:
            setattr(module, name, original)
    swaps.clear()


def unload_clone(training) -> None:
    """Unload a gradient or training clone now, so its wrappers and checkpointed views leave the shared model."""
    owners = (training, *training.get_nested_additional_models())
    targets = {id(owner) for owner in owners}
    for loaded in list(comfy.model_management.current_loaded_models):
        if loaded.model is not None and id(loaded.model) in targets:
            loaded.model_unload()
            comfy.model_management.current_loaded_models.remove(loaded)
    for owner in owners:
        _restore_weights(owner.get_attachment(SWAPS_ATTACHMENT) or [])
        _quantised_weights_as_inference_tensors(owner)
    comfy.model_management.soft_empty_cache()


def _quantised_weights_as_inference_tensors(patcher) -> None:
    """Make the shared model's quantised weights (tensor subclasses) inference tensors again.

    ComfyUI 0.33's quantised layers copy their weights into ordinary tensors when moved outside inference mode,
    as the training clone's load does, and once ordinary they fail to load under inference mode, as every node
    runs ("Cannot set version_counter for inference tensor"). Plain tensors load either way and stay."""
    with torch.inference_mode():
        for module in patcher.model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if type(param) is not torch.nn.Parameter and not param.is_inference():
                    setattr(module, name, torch.nn.Parameter(param.clone(), requires_grad=False))
