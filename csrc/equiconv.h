// Shared, device-agnostic preparation for equifast's compiled kernels.
//
// Every op is one instance of the generic "orbit convolution"
//
//   out[b, g, o, i, j] = bias[o] + Σ_{h < m, c, u, v} Wg[g][o][k(h, c, u, v)] · xp[b, h, c, r, q]
//       r = i·sh − pt + u·dh,  q = j·sw − pl + v·dw   (zero outside the H × W image)
//       xp[b, h, c, r, q] = x[b, h, c, XP[g][r·W + q]]          (XP: pixel permutation, or identity)
//       Wg[g][o][k(h, c, u, v)] = weight[o, slot[g][h], c, KP[g][u·kw + v]]   (KP: kernel permutation)
//
// with k(h, c, u, v) = ((h·C + c)·kh + u)·kw + v. The Python side passes the integer tables:
//   lift_conv  (m = 1, slot = 0):   view: XP[g] = perm[g⁻¹], KP = id;   canonical: XP = id, KP[g] = perm_k[g]
//   group_conv (m = n):             slot[g][h] = g⁻¹·h;  view: KP = id;  canonical: KP[g] = perm_k[g]
// Because slot[g] and KP[g] are permutations, k -> widx[g][k] (the flat weight index) is a permutation
// for every g, so grad weight folds back without atomics: gw[o, t] = Σ_g gWg[g][o][winv[g][t]].
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace equifast {

struct Geom {
  int64_t B = 0, m = 1, C = 0, H = 0, W = 0;  // input [B, m, C, H, W]
  int64_t Co = 0, mw = 1, kh = 0, kw = 0;     // weight [Co, mw, C, kh, kw]
  int64_t n = 1, Ho = 0, Wo = 0;              // output [B, n, Co, Ho, Wo]
  int64_t sh = 1, sw = 1, pt = 0, pl = 0, dh = 1, dw = 1;
  int64_t xs[5] = {0, 0, 0, 0, 0};            // input strides (b, copy, c, row, col), elements
  C10_HOST_DEVICE int64_t K() const { return m * C * kh * kw; }
};

// What the device kernels get: geometry plus the prepared tables, all on the input's device.
struct Prepared {
  Geom geom;
  at::Tensor x;       // the input, any strides (as given)
  at::Tensor Wg;      // [n, Co, K] effective weights per group element (x's dtype, contiguous)
  at::Tensor widx;    // [n, K] int64 flat weight index of every k
  at::Tensor xperm;   // [n, H*W] int64 pixel table (defined; identity rows when none was given)
  bool identity_x = true;  // XP is the identity for every g
  bool x_channels_last = false;
};

inline std::vector<int64_t> three_or_two(at::IntArrayRef v, size_t len, const char* name, const char* op) {
  TORCH_CHECK(v.size() == len, op, ": ", name, " must have ", len, " entries, got ", v.size());
  return v.vec();
}

inline bool stack_is_channels_last(const at::Tensor& t) {
  if (t.is_contiguous()) return false;
  if (t.dim() == 4) return t.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (t.dim() == 5) return t.permute({0, 3, 4, 1, 2}).is_contiguous();
  return false;
}

// Output stack [B, n, Co, Ho, Wo]: channels_last (memory B, Ho, Wo, n, Co) when the input is.
inline at::Tensor empty_stack(const Geom& g, bool channels_last, const at::TensorOptions& opt) {
  if (channels_last) return at::empty({g.B, g.Ho, g.Wo, g.n, g.Co}, opt).permute({0, 3, 4, 1, 2});
  return at::empty({g.B, g.n, g.Co, g.Ho, g.Wo}, opt);
}

// Grad input in the input's layout: a [B, m, C, H, W] stack (channels_last: memory B, H, W, m, C)
// or a [B, C, H, W] image (channels_last or contiguous).
inline at::Tensor empty_grad_input(const Geom& g, const at::Tensor& x, bool channels_last) {
  if (x.dim() == 5)
    return channels_last ? at::empty({g.B, g.H, g.W, g.m, g.C}, x.options()).permute({0, 3, 4, 1, 2})
                         : at::empty({g.B, g.m, g.C, g.H, g.W}, x.options());
  return at::empty_like(x, channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

// Check shapes and tables, build geometry, Wg and the weight index.
//   lift:  x [B, C, H, W], weight [Co, C, kh, kw], slot [n, 1] (zeros)
//   group: x [B, n, C, H, W], weight [Co, n, C, kh, kw], slot [n, n]
// xperm: [n, H*W] int64 or empty (identity); kperm: [n, kh*kw] int64 or empty (identity).
inline Prepared prepare(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& slot_in,
                        const at::Tensor& xperm_arg, const at::Tensor& kperm_arg, int64_t order,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const at::Tensor xperm_in = xperm_arg.defined() ? xperm_arg : at::empty({0}, at::kLong);
  const at::Tensor kperm_in = kperm_arg.defined() ? kperm_arg : at::empty({0}, at::kLong);
  const bool lift = x.dim() == 4;
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, op, ": expected input of 4 (lift) or 5 (group) dims, got ",
              x.sizes());
  TORCH_CHECK(weight.dim() == x.dim(), op, ": weight must have ", x.dim(), " dims, got ", weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but input is on ",
              x.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ", weight.scalar_type(),
              " but input has dtype ", x.scalar_type());
  auto st = three_or_two(stride, 2, "stride", op);
  auto pd = three_or_two(padding, 4, "padding (top, bottom, left, right)", op);
  auto dl = three_or_two(dilation, 2, "dilation", op);
  TORCH_CHECK(st[0] >= 1 && st[1] >= 1 && dl[0] >= 1 && dl[1] >= 1 && pd[0] >= 0 && pd[1] >= 0 && pd[2] >= 0 &&
              pd[3] >= 0, op, ": stride and dilation must be >= 1 and padding >= 0");
  Geom g;
  g.B = x.size(0);
  g.m = lift ? 1 : x.size(1);
  g.C = lift ? x.size(1) : x.size(2);
  g.H = x.size(-2);
  g.W = x.size(-1);
  g.Co = weight.size(0);
  g.mw = lift ? 1 : weight.size(1);
  TORCH_CHECK((lift ? weight.size(1) : weight.size(2)) == g.C, op, ": weight has ",
              (lift ? weight.size(1) : weight.size(2)), " input channels but the input has ", g.C);
  g.kh = weight.size(-2);
  g.kw = weight.size(-1);
  g.n = lift ? order : x.size(1);
  TORCH_CHECK(g.n >= 1, op, ": group order must be >= 1");
  TORCH_CHECK(g.mw == g.m, op, ": weight group axis (", g.mw, ") must equal the input's (", g.m, ")");
  g.sh = st[0]; g.sw = st[1]; g.pt = pd[0]; g.pl = pd[2]; g.dh = dl[0]; g.dw = dl[1];
  g.Ho = (g.H + pd[0] + pd[1] - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + pd[2] + pd[3] - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, op, ": empty output size ", g.Ho, "x", g.Wo);
  if (lift) {
    g.xs[0] = x.stride(0); g.xs[1] = 0; g.xs[2] = x.stride(1); g.xs[3] = x.stride(2); g.xs[4] = x.stride(3);
  } else {
    for (int d = 0; d < 5; ++d) g.xs[d] = x.stride(d);
  }
  const int64_t HW = g.H * g.W, KK = g.kh * g.kw, K = g.K();
  auto lopt = at::TensorOptions().dtype(at::kLong).device(x.device());

  at::Tensor slot = slot_in.to(lopt);
  TORCH_CHECK(slot.dim() == 2 && slot.size(0) == g.n && slot.size(1) == g.m, op, ": slot table must be [",
              g.n, ", ", g.m, "], got ", slot.sizes());
  at::Tensor kperm;
  if (kperm_in.numel() == 0) {
    kperm = at::arange(KK, lopt).unsqueeze(0).expand({g.n, KK});
  } else {
    TORCH_CHECK(kperm_in.dim() == 2 && kperm_in.size(0) == g.n && kperm_in.size(1) == KK, op,
                ": kernel permutation table must be [", g.n, ", ", KK, "], got ", kperm_in.sizes());
    kperm = kperm_in.to(lopt);
  }
  Prepared p;
  p.identity_x = xperm_in.numel() == 0;
  if (p.identity_x) {
    p.xperm = at::arange(HW, lopt).unsqueeze(0).expand({g.n, HW}).contiguous();
  } else {
    TORCH_CHECK(xperm_in.dim() == 2 && xperm_in.size(0) == g.n && xperm_in.size(1) == HW, op,
                ": pixel permutation table must be [", g.n, ", H*W=", HW, "], got ", xperm_in.sizes());
    p.xperm = xperm_in.to(lopt).contiguous();
  }
  // Tables given on the CPU are validated (permutations); the Python side builds them from validated groups.
  if (!slot_in.is_cuda() && !kperm_in.is_cuda() && !xperm_in.is_cuda()) {
    auto chk = [&](const at::Tensor& t, int64_t size, const char* what) {  // O(numel): every value once per row
      if (t.numel() == 0) return;
      auto v = t.to(at::kCPU).to(at::kLong).contiguous();
      bool ok = v.min().item<int64_t>() >= 0 && v.max().item<int64_t>() < size;
      if (ok) {
        auto flat = (v + at::arange(v.size(0), at::kLong).unsqueeze(1) * size).reshape({-1});
        ok = at::bincount(flat, {}, v.size(0) * size).eq(1).all().item<bool>();
      }
      TORCH_CHECK(ok, op, ": every row of the ", what, " table must be a permutation of 0..", size - 1);
    };
    chk(slot_in, g.m, "slot");
    chk(kperm_in, KK, "kernel permutation");
    chk(xperm_in, HW, "pixel permutation");
  }
  // widx[g][k] = (slot[g][h]·C + c)·kh·kw + KP[g][u·kw + v]
  auto cidx = at::arange(g.C, lopt).view({1, 1, g.C, 1});
  p.widx = ((slot.view({g.n, g.m, 1, 1}) * g.C + cidx) * KK + kperm.reshape({g.n, 1, 1, KK})).reshape({g.n, K});
  p.Wg = weight.reshape({g.Co, K}).index_select(1, p.widx.reshape({-1})).view({g.Co, g.n, K}).transpose(0, 1)
             .contiguous();
  p.geom = g;
  p.x = x;
  p.x_channels_last = stack_is_channels_last(x);
  return p;
}

// gw [Co, K] (weight's shape) from per-element partials gWg [n, Co, K] (no atomics, fixed order).
inline at::Tensor fold_grad_weight(const Prepared& p, const at::Tensor& gWg, const at::Tensor& weight) {
  const Geom& g = p.geom;
  const int64_t K = g.K();
  auto winv = at::argsort(p.widx, /*stable=*/true, /*dim=*/1);  // inverse permutations
  auto gw = gWg.gather(2, winv.unsqueeze(1).expand({g.n, g.Co, K})).sum(0);
  return gw.to(weight.scalar_type()).reshape(weight.sizes()).contiguous();
}

inline void check_bias(const char* op, const c10::optional<at::Tensor>& bias, const Geom& g, const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.Co, op, ": bias must be [", g.Co, "], got ", bias->sizes());
  TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == x.scalar_type(), op,
              ": bias must match the input's device and dtype");
}

inline void check_grad_out(const char* op, const at::Tensor& go, const Geom& g) {
  TORCH_CHECK(go.dim() == 5 && go.size(0) == g.B && go.size(1) == g.n && go.size(2) == g.Co && go.size(3) == g.Ho &&
              go.size(4) == g.Wo, op, ": grad_out must be [", g.B, ", ", g.n, ", ", g.Co, ", ", g.Ho, ", ", g.Wo,
              "], got ", go.sizes());
}

inline std::array<bool, 2> mask_pair(const char* op, const c10::List<bool>& mask) {
  TORCH_CHECK(mask.size() >= 2, op, ": output_mask needs at least 2 entries (grad input, grad weight)");
  return {mask.get(0), mask.get(1)};
}

inline at::Tensor zeros_slot(int64_t n) { return at::zeros({n, 1}, at::kLong); }

}  // namespace equifast
