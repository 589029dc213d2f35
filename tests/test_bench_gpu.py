"""``atrous bench gpu`` has to work the first time it meets a GPU: its code runs here on the CPU, shrunk; its
bookkeeping (kernel families, datasheet peaks, what a row's time and memory include) is checked on its own."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch.autograd import DeviceType

import atrous
from atrous.bench import gpu
from atrous.bench.gpu import Setting, bench_gpu, datasheet_peak, kernel_family, kernel_shares, print_gpu
from atrous.flops import count_flops
from atrous.train import loop
from atrous.train.distributed import Dist
from atrous.train.loop import FitResult, Trainer

SMALL = Setting(
    model="deeplabv3_small", batch=2, size=64, bare_steps=1, train_steps=3, matmul=256, compile=False
)


def test_the_gpu_suite_runs_end_to_end_on_a_small_setting(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row runs; its numbers follow from what was measured: a bare row's img/s is the batch over the
    timed seconds, the train row's is the images after the first step over the time after it, MFU is FLOPs
    times rate over the peak, and the FLOP count is forward and backward of one image."""
    per_call = 0.25  # every timed call (each still runs what it times) takes a known time: rates are known

    def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
        fn()
        return per_call

    fits: list[FitResult] = []
    fit = loop.fit

    def recorded_fit(cfg, *args, **kwargs) -> FitResult:
        fits.append(fit(cfg, *args, **kwargs))
        return fits[-1]

    monkeypatch.setattr(gpu, "timed", timed)
    monkeypatch.setattr(loop, "fit", recorded_fit)
    result = bench_gpu(torch.device("cpu"), workers=0, setting=SMALL)
    assert [r for r in result["rows"] if "error" in r] == []
    *bare, train = result["rows"]
    assert train["config"] == "atrous train, channels-last eager, data and all"
    assert [r["img_s"] for r in bare] == [SMALL.batch / per_call] * 2
    assert result["matmul_tflops"] == pytest.approx(2 * SMALL.matmul**3 / per_call / 1e12)
    (run,) = fits
    (epoch,) = run.history
    after_first = epoch["seconds"] - run.first_step_seconds
    assert train["img_s"] == pytest.approx(SMALL.batch * (SMALL.train_steps - 1) / after_first)
    assert train["first_step_s"] == run.first_step_seconds and "compile_s" not in train
    flop = result["gflop_per_img"] * 1e9
    for r in result["rows"]:
        assert r["mfu_measured"] == pytest.approx(flop * r["img_s"] / (result["matmul_tflops"] * 1e12))
        assert (
            r["mfu_datasheet"] is None and r["vs_torchvision_cl"] is None
        )  # no datasheet, no torchvision row
    # Backward costs about two forwards (input and weight gradients; the first layer needs no input gradient).
    forward = count_flops(atrous.create_model(SMALL.model_spec()), (3, SMALL.size, SMALL.size))
    assert 2 * forward < flop <= 3 * forward
    assert [d["pipeline"].split(",")[0] for d in result["data"]] == [
        "composed on the device",
        "drawn on the CPU",
    ]
    # A CPU has no device kernels: the profile is empty and says so, rather than 0 % of every family.
    assert result["profile"] == {"device_ms_per_step": 0.0, "families": [], "unclassified_kernels": []}
    print_gpu(result, Console(width=100))
    out = capsys.readouterr().out
    assert "Training speed, same run" in out and "no device kernels were recorded (empty profile)" in out


@dataclasses.dataclass
class StandInEvent:
    """What ``_device_events`` reads of a torch.profiler event."""

    name: str
    device_type: DeviceType
    activity_type: str | None
    us: float
    is_user_annotation: bool = False

    @property
    def time_range(self) -> SimpleNamespace:
        return SimpleNamespace(elapsed_us=lambda: self.us)


def test_a_profile_becomes_kernel_families_without_host_events_or_annotations() -> None:
    """From the profiler's events to shares: device kernels and copies count; host events and annotations
    (which span the kernels they annotate, so would count their time twice) do not."""
    fprop, dgrad = REAL_KERNELS[0][0], REAL_KERNELS[3][0]
    cuda = DeviceType.CUDA
    events = [
        StandInEvent(fprop, cuda, "kernel", 500.0),
        StandInEvent(dgrad, cuda, "kernel", 250.0),
        StandInEvent("Memcpy HtoD (Pageable -> Device)", cuda, "gpu_memcpy", 150.0),
        StandInEvent("vectorized_elementwise_kernel", cuda, None, 100.0),  # a torch that gives no type
        StandInEvent("ProfilerStep#1", cuda, "gpu_user_annotation", 1000.0),
        StandInEvent("## forward ##", cuda, "kernel", 1000.0, is_user_annotation=True),
        StandInEvent("aten::convolution", DeviceType.CPU, None, 4000.0),
    ]
    p = kernel_shares(gpu._device_events(SimpleNamespace(events=lambda: events)), steps=2)
    assert p["device_ms_per_step"] == pytest.approx(0.5)
    assert {f["family"]: f["share"] for f in p["families"]} == {
        "conv forward": pytest.approx(0.5),
        "conv backward": pytest.approx(0.25),
        "memcpy": pytest.approx(0.15),
        "elementwise and copies": pytest.approx(0.1),
        "unclassified": 0.0,
    }


# Kernel names as torch.profiler reports them on Hopper and Ampere (cuDNN 8/9, cutlass, cuBLAS/cuBLASLt, ATen,
# inductor), with the family each belongs to.
REAL_KERNELS = [
    # cuDNN convolutions: xmma implicit GEMMs, direction in the name (fprop, dgrad, wgrad)
    (
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1"
        "_g1_execute_segment_k_off_kernel__5x_cudnn",
        "conv forward",
    ),
    (
        "sm80_xmma_fprop_implicit_gemm_indexed_wo_smem_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x32x64"
        "_stage4_warpsize4x1x1_g1_tensor16x8x16_alignc4_execute_kernel__5x_cudnn",
        "conv forward",
    ),
    (
        "sm86_xmma_fprop_implicit_gemm_indexed_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage3"
        "_warpsize1x4x1_g8_tensor16x8x16_execute_kernel__5x_cudnn",
        "conv forward",
    ),
    (
        "sm80_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x32_stage4"
        "_warpsize2x2x1_g1_tensor16x8x16_execute_kernel__5x_cudnn",
        "conv backward",
    ),
    (
        "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1"
        "_g1_execute_segment_k_off_kernel__5x_cudnn",
        "conv backward",
    ),
    (
        "sm80_xmma_wgrad_implicit_gemm_indexed_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_stage4"
        "_warpsize1x1x4_g8_tensor16x8x16_execute_kernel__5x_cudnn",
        "conv backward",
    ),
    (
        "sm80_xmma_depthwise_convolution_dgrad_tiling_f16f16_f32f32_f32_nhwckrsc_nhwc_tilesize1x8x8_1x5x5"
        "_1x1x1_1x1x1_stage2_warpsize4x1x1_g64_betaFalse_execute_kernel__5x_cudnn",
        "conv backward",
    ),
    (
        "void cudnn::cnn::wgrad2d_c1_k1_nhwc_kernel<__half, float, 1, 5, 5, 1, 1, 1, 1, true>(cudnnTensorStruct, "
        "__half const*, cudnnTensorStruct, __half const*, cudnnConvolutionStruct, cudnnFilterStruct, float*)",
        "conv backward",
    ),
    (
        "void cudnn::detail::dgrad_engine<float, 128, 6, 7, 3, 3, 5, false>(int, int, int, float const*, int, "
        "float const*, int, float*, kernel_grad_params, unsigned long long, int, unsigned long long, int, float, "
        "int, int, int)",
        "conv backward",
    ),
    (
        "void cudnn::detail::wgrad_alg0_engine<float, 128, 5, 5, 3, 3, 3, false, 512>(int, int, int, float const*, "
        "int, float*, float const*, kernel_grad_params, unsigned long long, int, float, int, int, int, int)",
        "conv backward",
    ),
    # older cuDNN forward kernels and cutlass convolutions inside cuDNN
    (
        "void cudnn::detail::implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>"
        "(int, int, int, float const*, int, float*, float const*, kernel_conv_params, unsigned long long, int, "
        "float, float, int, float const*, float const*, bool, int, int)",
        "conv forward",
    ),
    ("implicit_convolveNd_sgemm", "conv forward"),
    (
        "void cutlass_cudnn_infer::Kernel<cutlass_tensorop_s1688fprop_optimized_tf32_128x128_16x4_nhwc_align4>"
        "(cutlass_tensorop_s1688fprop_optimized_tf32_128x128_16x4_nhwc_align4::Params)",
        "conv forward",
    ),
    (
        "void conv2d_c1_k1_nhwc_kernel_specialized<__half, __half, __half, float, float, 5, 1, 8, 3, true>(float, "
        "cudnnTensorStruct, __half const*, cudnnFilterStruct, __half const*, cudnnConvolutionStruct, float, "
        "cudnnTensorStruct, __half*, C1K1NhwcParams, int)",
        "conv forward",
    ),
    ("ampere_scudnn_winograd_128x128_ldg1_ldg4_relu_tile148t_nt_v1", "conv forward"),
    ("ampere_scudnn_128x64_relu_interior_nn_v1", "conv (direction not in the name)"),
    (
        "void cask__5x_cudnn::computeOffsetsKernel<false, false>(cask__5x_cudnn::ComputeOffsetsParams)",
        "conv (direction not in the name)",
    ),
    # cuDNN's layout conversions around a channels-last convolution
    (
        "void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, "
        "(cudnnKernelDataType_t)0>(cudnn::ops::nchw2nhwc_params_t<float>, __nv_bfloat16 const*, __nv_bfloat16*)",
        "layout (nchw<->nhwc)",
    ),
    (
        "void cudnn::ops::nhwcToNchwKernel<float, float, float, true, false, (cudnnKernelDataType_t)0>",
        "layout (nchw<->nhwc)",
    ),
    # cuBLAS / cuBLASLt / cutlass matrix products (Hopper's cuBLAS names its kernels nvjet_*)
    (
        "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_32x3_nn_align4>"
        "(cutlass_80_tensorop_s1688gemm_128x128_32x3_nn_align4::Params)",
        "matmul",
    ),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_nn_align8>", "matmul"),
    ("ampere_sgemm_128x64_nn", "matmul"),
    ("ampere_sgemm_128x32_sliced1x4_nn", "matmul"),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_nn", "matmul"),
    (
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off"
        "_kernel__5x_cublas",
        "matmul",
    ),
    ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, false, false>", "matmul"),
    # ATen: batch norm (channels-last and NCHW), cuDNN's batch norm, upsampling, pooling
    (
        "void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var, c10::BFloat16, float, 4>",
        "batch norm",
    ),
    (
        "void at::native::batch_norm_backward_reduce_channels_last_kernel<4, c10::BFloat16, float, float>",
        "batch norm",
    ),
    (
        "void at::native::batch_norm_transform_input_channels_last_kernel<c10::BFloat16, float, float, true>",
        "batch norm",
    ),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1>", "batch norm"),
    ("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>", "batch norm"),
    (
        "void at::native::(anonymous namespace)::upsample_bilinear2d_out_frame<c10::BFloat16, float>",
        "upsample",
    ),
    (
        "void at::native::(anonymous namespace)::upsample_bilinear2d_backward_nhwc_out_frame<c10::BFloat16, float>",
        "upsample",
    ),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::BFloat16, float>", "pooling"),
    # ATen: loss, optimizer (fused SGD through multi_tensor_apply), reductions, elementwise ops and copies
    (
        "void at::native::(anonymous namespace)::cunn_SpatialSoftMaxForward<float, float, float, "
        "at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>",
        "loss (softmax, nll)",
    ),
    (
        "void at::native::(anonymous namespace)::nll_loss2d_forward_kernel<float, float, long>",
        "loss (softmax, nll)",
    ),
    (
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<3>, at::native::(anonymous namespace)::FusedSgdMathFunctor<float, 3>, double, "
        "double, double, double, bool, bool, bool, float*, float*, float const*>",
        "optimizer (fused / foreach)",
    ),
    (
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
        "float>, unsigned int, float, 4> >",
        "reduction",
    ),
    (
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
        "std::array<char*, 3ul> >",
        "elementwise and copies",
    ),
    (
        "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::"
        "operator()() const::{lambda(float)#1}> >",
        "elementwise and copies",
    ),
    (
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::"
        "{lambda()#3}::operator()() const::{lambda()#10}::operator()() const::{lambda(c10::BFloat16)#1}>",
        "elementwise and copies",
    ),
    (
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::"
        "OpaqueType<2u>, unsigned int, 4, 64, 64>",
        "elementwise and copies",
    ),
    # torch.compile: inductor's Triton kernels, named after what they fuse
    ("triton_poi_fused__native_batch_norm_legit_functional_convolution_relu_12", "compiled (triton)"),
    ("triton_red_fused_native_batch_norm_backward_threshold_backward_7", "compiled (triton)"),
    # a kernel no rule knows
    (
        "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64, 64, 4, false, false, cutlass::half_t> >",
        "unclassified",
    ),
]


@pytest.mark.parametrize(("name", "family"), REAL_KERNELS, ids=[f[:60] for f, _ in REAL_KERNELS])
def test_real_kernel_names_fall_in_their_family(name: str, family: str) -> None:
    assert kernel_family(name) == family


def test_copies_and_sets_come_from_the_profilers_activity_type() -> None:
    assert kernel_family("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy") == "memcpy"
    assert kernel_family("Memset (Device)", "gpu_memset") == "memset"
    assert kernel_family("Memcpy DtoD (Device -> Device)") == "memcpy"  # a torch that gives no activity type
    # The activity type wins over the name: a copy is a copy whatever it is called.
    assert kernel_family("some_gemm_named_copy", "gpu_memcpy") == "memcpy"


def test_shares_name_the_unclassified_time_and_an_empty_profile_is_empty() -> None:
    fprop = REAL_KERNELS[0][0]
    events = [
        (fprop, "kernel", 600.0),
        ("ampere_sgemm_128x64_nn", "kernel", 300.0),
        ("mystery", "kernel", 100.0),
    ]
    p = kernel_shares(events, steps=2)
    assert p["device_ms_per_step"] == pytest.approx(0.5)
    assert [(f["family"], f["share"]) for f in p["families"]] == [
        ("conv forward", pytest.approx(0.6)),
        ("matmul", pytest.approx(0.3)),
        ("unclassified", pytest.approx(0.1)),
    ]
    assert p["unclassified_kernels"] == [{"name": "mystery", "share": pytest.approx(0.1)}]
    # "unclassified" is listed even when nothing is: the reader sees 0 %, not a missing row.
    assert kernel_shares(events[:1])["families"][-1] == {
        "family": "unclassified",
        "ms_per_step": 0.0,
        "share": 0.0,
    }
    assert kernel_shares([]) == {"device_ms_per_step": 0.0, "families": [], "unclassified_kernels": []}


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H100 80GB HBM3", 989),  # SXM5
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA A100-SXM4-40GB", 312),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100-PCIE-40GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L4", 121),
        ("NVIDIA L40", 181),  # not the L4's 121 (a substring match gave it that)
        ("NVIDIA L40S", 362),
        ("NVIDIA A10", 125),
        ("NVIDIA A10G", None),  # AWS's part, not an A10: no datasheet, no borrowed peak
        ("nvidia  a100-sxm4-80gb ", 312),  # case and separators are not part of the name
        ("NVIDIA H100", None),  # which H100? SXM and PCIe differ by a third
        ("NVIDIA GeForce RTX 4090", None),
        ("Some Future GPU", None),
    ],
)
def test_datasheet_peaks_come_from_exact_device_names(name: str, tflops: float | None) -> None:
    assert datasheet_peak(name) == (None if tflops is None else tflops * 1e12)


def test_bare_steps_use_the_optimizer_atrous_train_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, device: str
) -> None:
    """Same settings (lr, momentum, weight decay, and the fused kernels, which CPUs and GPUs both get) in both, or
    the bare rows measure a different step from the train rows they are compared with."""
    made: list[dict] = []
    init = torch.optim.SGD.__init__

    def spy(self: torch.optim.SGD, params, *args, **kwargs) -> None:
        init(self, params, *args, **kwargs)
        made.append(dict(self.defaults))

    dev = torch.device(device)
    configs = []

    def fit(cfg, console=None, **kwargs) -> FitResult:
        configs.append(cfg)
        raise KeyboardInterrupt  # the config is all this test needs from the train row

    monkeypatch.setattr("atrous.train.loop.fit", fit)
    with pytest.raises(KeyboardInterrupt):
        gpu.train_command_rate(SMALL, dev, False, 0)
    monkeypatch.setattr(torch.optim.SGD, "__init__", spy)
    _, model, forward = gpu._models(SMALL)[-1]
    gpu.bare_step(SMALL, model.to(dev), forward, dev, channels_last=True, steps=1)
    cfg = dataclasses.replace(configs[0], out=str(tmp_path / "r"))
    # Building the trainer builds the optimizer atrous train uses.
    Trainer(cfg, False, False, Console(quiet=True), Dist(device=dev))
    assert len(made) == 2
    assert made[0] == made[1]
    assert made[0]["weight_decay"] == 1e-4 and made[0]["momentum"] == 0.9
    assert made[0]["fused"] is True


def test_train_rows_see_no_bare_model_and_compile_time_is_compilation_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bookkeeping of ``bench_gpu`` with the measurements stubbed: (1) when ``atrous train`` runs, no model
    of the bare rows is alive (on a GPU its weights would count in the train rows' peak memory); (2) the compile
    time is the compiled run's first step less the eager run's, not the whole first step, which also holds the
    data start-up and cuDNN autotuning."""
    refs: list[weakref.ref] = []
    made = gpu._models

    def models(s: Setting) -> list:
        rows = made(s)
        refs.extend(weakref.ref(m) for _, m, _ in rows)
        return rows

    alive: list[list[bool]] = []

    def fit(cfg, console=None, **kwargs) -> FitResult:
        gc.collect()
        alive.append([r() is not None for r in refs])
        first = 12.0 if cfg.compile else 2.0  # data start-up + autotuning: 2 s in both; compiling: 10 s
        history = [{"img_per_s": 10.0, "seconds": first + 0.5 * (cfg.steps - 1)}]
        return FitResult(Path("unused"), history, -1.0, cfg.steps, first_step_seconds=first)

    monkeypatch.setattr(gpu, "_models", models)
    monkeypatch.setattr(gpu, "bare_step", lambda *a, **k: {"img_s": 10.0, "memory_gb": None})
    monkeypatch.setattr(gpu, "step_flops", lambda *a, **k: 1e9)
    monkeypatch.setattr(gpu, "bf16_matmul_peak", lambda *a, **k: 1e12)
    monkeypatch.setattr(gpu, "profile_step", lambda *a, **k: {"families": []})
    monkeypatch.setattr(gpu, "data_rate", lambda *a, **k: [])
    monkeypatch.setattr("atrous.train.loop.fit", fit)
    setting = Setting(model="deeplabv3_small", batch=2, size=64, train_steps=3, compile=True)
    result = bench_gpu(torch.device("cpu"), workers=0, setting=setting)
    assert len(refs) == 1 and alive == [[False], [False]]
    eager, compiled = result["rows"][-2:]
    assert "--compile" in compiled["config"] and "--compile" not in eager["config"]
    assert compiled["compile_s"] == pytest.approx(10.0)
    assert eager.get("compile_s") is None
