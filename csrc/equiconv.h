// Host-side pieces shared by the CPU and CUDA kernels of equifast_C (schemas in csrc/ops.cpp):
// argument checks, geometry, the pixel map, the per-element weights, and the four op entry points
// (written once here, instantiated per device by csrc/cpu/equiconv_kernel.cpp and
// csrc/cuda/equiconv_kernel.cu with that device's forward / backward).
//
// Every op is one instance of the generic "orbit convolution"
//
//   out[b, g, o, i, j] = bias[o] + Σ_{h < m, c, u, v} Wg[g][o][k(h, c, u, v)] · xp[b, h, c, r, q]
//       r = i·sh − pt + u·dh,  q = j·sw − pl + v·dw   (zero outside the H × W image)
//       xp[b, h, c, r, q] = x[b, h, c, XP_g(r, q)]          (XP: the pixel map of copy g)
//       Wg[g][o][k(h, c, u, v)] = weight[o, slot[g][h], c, KP[g][u·kw + v]]   (KP: kernel permutation)
//
// with k(h, c, u, v) = ((h·C + c)·kh + u)·kw + v. The Python side passes the group as integer tables:
//   lift_conv  (m = 1, slot = 0):   view: XP_g = act(·, g⁻¹), KP = id;   canonical: XP = id, KP[g] = perm_k[g]
//   group_conv (m = n):             slot[g][h] = g⁻¹·h;  view: KP = id;  canonical: KP[g] = perm_k[g]
// Because slot[g] and KP[g] are permutations, k -> widx[g][k] (the flat weight index) is a permutation
// for every g, so grad weight folds back without atomics: gw[o, t] = Σ_g gWg[g][o][winv[g][t]].
//
// The pixel map `xmap` comes in one of three forms:
//   empty            the identity for every copy;
//   [n, 2, 3] int64  affine: view pixel (r, q) of copy g reads input pixel
//                      (A[g][0][0]·r + A[g][0][1]·q + A[g][0][2],  A[g][1][0]·r + A[g][1][1]·q + A[g][1][2])
//                    with a signed permutation matrix (rotations and flips by multiples of 90°):
//                    no per-size table at all;
//   [n, H·W] int32 or int64   a pixel table: view pixel r·W + q of copy g reads input pixel XP[g][r·W + q].
//
// Geometry is checked with overflow-safe arithmetic before anything is allocated (every message names
// the argument), so no int64 argument leads to undefined behaviour; the output size floors, as
// torch.nn.functional.conv2d and equifast/_args.py's out_size do.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <limits>
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

// The pixel map (see above), checked. For the affine form `affine` holds n·6 coefficients on the host
// (a[0]·r + a[1]·q + a[2], a[3]·r + a[4]·q + a[5]); a table is contiguous, on the input's device.
struct PixelMap {
  enum Kind { kIdentity, kAffine, kTable } kind = kIdentity;
  std::vector<int64_t> affine;
  at::Tensor table;  // [n, H·W] int32 or int64
  bool identity() const { return kind == kIdentity; }
};

// What the device kernels get: geometry plus the prepared tables, all on the input's device.
struct Prepared {
  Geom geom;
  at::Tensor x;       // the input, any strides (as given)
  at::Tensor Wg;      // [n, Co, K] effective weights per group element (x's dtype, contiguous)
  at::Tensor widx;    // [n, K] int64 flat weight index of every k
  PixelMap xmap;
  bool x_channels_last = false;
};

// ------------------------------------------------------------------ overflow-safe integer arithmetic
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

inline int64_t checked_add(const std::string& op, int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &r), op, ": ", what, " overflows int64 (", a, " + ", b, ")");
  return r;
}

inline int64_t checked_mul(const std::string& op, int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &r), op, ": ", what, " overflows int64 (", a, " * ", b, ")");
  return r;
}

inline std::vector<int64_t> exactly(at::IntArrayRef v, size_t len, const char* name, const std::string& op) {
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

// Stride, padding and dilation against the image and kernel: sets sh, sw, pt, pl, dh, dw, Ho, Wo.
// Rounding floors (the numerator is never negative here, so C++ division is the floor).
inline void set_conv_geometry(const std::string& op, Geom& g, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const auto st = exactly(stride, 2, "stride", op);
  const auto pd = exactly(padding, 4, "padding (top, bottom, left, right)", op);
  const auto dl = exactly(dilation, 2, "dilation", op);
  TORCH_CHECK(st[0] >= 1 && st[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dl[0] >= 1 && dl[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(pd[0] >= 0 && pd[1] >= 0 && pd[2] >= 0 && pd[3] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(g.H >= 1 && g.W >= 1, op, ": the input's spatial size must be at least 1x1, got ", g.H, "x", g.W);
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1, op, ": the kernel size (weight's last two dims) must be at least 1x1, got ",
              g.kh, "x", g.kw);
  const int64_t Hp = checked_add(op, checked_add(op, g.H, pd[0], "H + padding"), pd[1], "H + padding");
  const int64_t Wp = checked_add(op, checked_add(op, g.W, pd[2], "W + padding"), pd[3], "W + padding");
  const int64_t Kh = checked_add(op, checked_mul(op, dl[0], g.kh - 1, "dilation * (kh - 1)"), 1, "dilated kernel");
  const int64_t Kw = checked_add(op, checked_mul(op, dl[1], g.kw - 1, "dilation * (kw - 1)"), 1, "dilated kernel");
  TORCH_CHECK(Hp >= Kh && Wp >= Kw, op, ": output size would be empty: the padded input ", Hp, "x", Wp,
              " (padding ", padding, ") is smaller than the dilated kernel ", Kh, "x", Kw, " (dilation ", dilation,
              ")");
  g.sh = st[0]; g.sw = st[1]; g.pt = pd[0]; g.pl = pd[2]; g.dh = dl[0]; g.dw = dl[1];
  g.Ho = (Hp - Kh) / g.sh + 1;
  g.Wo = (Wp - Kw) / g.sw + 1;
  int64_t numel = g.B;
  for (int64_t d : {g.n, g.Co, g.Ho, g.Wo}) numel = checked_mul(op, numel, d, "the number of output elements");
}

// Check a table's dtype (int32 or int64) and that every row is a permutation of 0..size-1, on the CPU
// with one byte per value of a row (no copies for CPU tables). CUDA tables get a range check only
// (no out-of-bounds read is possible; the Python side builds them from validated groups).
inline void check_permutation_rows(const std::string& op, const at::Tensor& t, int64_t size, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": the ", what,
              " table must be int32 or int64, got ", t.scalar_type());
  if (t.numel() == 0) return;
  if (!t.device().is_cpu()) {
    auto mm = at::aminmax(t);
    TORCH_CHECK(std::get<0>(mm).item<int64_t>() >= 0 && std::get<1>(mm).item<int64_t>() < size, op,
                ": every value of the ", what, " table must lie in 0..", size - 1);
    return;
  }
  const at::Tensor c = t.contiguous();
  std::vector<uint8_t> seen(static_cast<size_t>(size));
  const int64_t rows = c.size(0);
  auto check = [&](auto* data) {
    for (int64_t row = 0; row < rows; ++row) {
      std::fill(seen.begin(), seen.end(), 0);
      bool ok = true;
      for (int64_t i = 0; i < size && ok; ++i) {
        const int64_t v = static_cast<int64_t>(data[row * size + i]);
        ok = v >= 0 && v < size && !seen[v];
        if (ok) seen[v] = 1;
      }
      TORCH_CHECK(ok, op, ": every row of the ", what, " table must be a permutation of 0..", size - 1,
                  " (row ", row, " is not)");
    }
  };
  if (c.scalar_type() == at::kInt) check(c.data_ptr<int32_t>());
  else check(c.data_ptr<int64_t>());
}

inline PixelMap make_pixel_map(const std::string& op, const at::Tensor& xmap, const Geom& g, const at::Device& dev) {
  PixelMap pm;
  if (!xmap.defined() || xmap.numel() == 0) return pm;
  TORCH_CHECK(xmap.device() == dev, op, ": the pixel map is on ", xmap.device(), " but the input is on ", dev);
  if (xmap.dim() == 3) {
    TORCH_CHECK(xmap.scalar_type() == at::kLong || xmap.scalar_type() == at::kInt, op,
                ": an affine pixel map must be int64 (or int32), got ", xmap.scalar_type());
    TORCH_CHECK(xmap.size(0) == g.n && xmap.size(1) == 2 && xmap.size(2) == 3, op,
                ": an affine pixel map must be [n=", g.n, ", 2, 3], got ", xmap.sizes());
    const at::Tensor a = xmap.to(at::kCPU, at::kLong).contiguous();
    pm.kind = PixelMap::kAffine;
    pm.affine.assign(a.data_ptr<int64_t>(), a.data_ptr<int64_t>() + a.numel());
    for (int64_t e = 0; e < g.n; ++e) {
      const int64_t* c = pm.affine.data() + 6 * e;
      // a signed permutation matrix: one ±1 per row and per column
      auto one = [](int64_t v) { return v == 1 || v == -1; };
      const bool unit = (one(c[0]) && c[1] == 0 && c[3] == 0 && one(c[4])) ||
                        (c[0] == 0 && one(c[1]) && one(c[3]) && c[4] == 0);
      TORCH_CHECK(unit, op, ": the affine pixel map of copy ", e,
                  " must be a rotation or flip by a multiple of 90 degrees (a signed permutation matrix)");
      // (0, 0) first (so that the others cannot overflow), then the other corners: inside the image
      bool inside = c[2] >= 0 && c[2] < g.H && c[5] >= 0 && c[5] < g.W;
      for (int64_t r : {int64_t(0), g.H - 1})
        for (int64_t q : {int64_t(0), g.W - 1}) {
          if (!inside) break;
          const int64_t rr = c[0] * r + c[1] * q + c[2], cc = c[3] * r + c[4] * q + c[5];
          inside = rr >= 0 && rr < g.H && cc >= 0 && cc < g.W;
        }
      TORCH_CHECK(inside, op, ": the affine pixel map of copy ", e, " maps the ", g.H, "x", g.W,
                  " image outside itself");
    }
    return pm;
  }
  TORCH_CHECK(xmap.dim() == 2 && xmap.size(0) == g.n && xmap.size(1) == g.H * g.W, op,
              ": pixel permutation table must be [n=", g.n, ", H*W=", g.H * g.W, "] (or an affine map [n, 2, 3]), got ",
              xmap.sizes());
  check_permutation_rows(op, xmap, g.H * g.W, "pixel permutation");
  pm.kind = PixelMap::kTable;
  pm.table = xmap.contiguous();
  return pm;
}

// The pixel map as a table [n, H·W] of `dtype` (int32 or int64; int32 needs H·W < 2^31) on the input's
// device, for a kernel that cannot read the affine form (csrc/cuda: an affine map with more copies than it
// takes by value). Row e: view pixel r·W + q of copy e reads input pixel table[e][r·W + q].
inline at::Tensor pixel_table(const Prepared& p, at::ScalarType dtype) {
  const Geom& g = p.geom;
  auto opt = at::TensorOptions().dtype(dtype).device(p.x.device());
  const int64_t HW = g.H * g.W;
  if (p.xmap.kind == PixelMap::kTable) return p.xmap.table.to(dtype).contiguous();
  if (p.xmap.kind == PixelMap::kIdentity) return at::arange(HW, opt).unsqueeze(0).expand({g.n, HW}).contiguous();
  at::Tensor a = at::from_blob(const_cast<int64_t*>(p.xmap.affine.data()), {g.n, 6}, at::kLong).to(opt);
  at::Tensor r = at::arange(g.H, opt).view({1, g.H, 1}), q = at::arange(g.W, opt).view({1, 1, g.W});
  auto coef = [&](int i) { return a.select(1, i).view({g.n, 1, 1}); };
  at::Tensor row = coef(0) * r + coef(1) * q + coef(2), col = coef(3) * r + coef(4) * q + coef(5);
  return (row * g.W + col).reshape({g.n, HW}).contiguous();
}

// Check shapes, geometry and tables; build Wg and the weight index.
//   lift:  x [B, C, H, W], weight [Co, C, kh, kw], slot undefined (all zeros)
//   group: x [B, n, C, H, W], weight [Co, n, C, kh, kw], slot [n, n]
// kperm: [n, kh*kw] int32/int64 or empty (identity).
inline Prepared prepare(const std::string& op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& slot_in,
                        const at::Tensor& xmap, const at::Tensor& kperm_in, int64_t order, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  const bool lift = !slot_in.defined();
  TORCH_CHECK(x.dim() == (lift ? 4 : 5), op, ": expected input of shape ",
              lift ? "[B, C_in, H, W]" : "[B, n, C_in, H, W]", ", got ", x.sizes());
  TORCH_CHECK(weight.dim() == x.dim(), op, ": weight must have ", x.dim(), " dims, got ", weight.sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but input is on ",
              x.device());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ", weight.scalar_type(),
              " but input has dtype ", x.scalar_type());
  TORCH_CHECK(order >= 1, op, ": the group order must be >= 1, got ", order);
  Geom g;
  g.B = x.size(0);
  g.m = lift ? 1 : x.size(1);
  g.C = lift ? x.size(1) : x.size(2);
  g.H = x.size(-2);
  g.W = x.size(-1);
  g.Co = weight.size(0);
  g.mw = lift ? 1 : weight.size(1);
  g.kh = weight.size(-2);
  g.kw = weight.size(-1);
  g.n = order;
  TORCH_CHECK(g.C >= 1, op, ": the input has C_in = 0 channels; expected at least one");
  TORCH_CHECK((lift ? weight.size(1) : weight.size(2)) == g.C, op, ": weight has ",
              (lift ? weight.size(1) : weight.size(2)), " input channels but the input has ", g.C);
  TORCH_CHECK(lift || g.m == g.n, op, ": the input's group axis (", g.m, ") must equal the group order (", g.n, ")");
  TORCH_CHECK(g.mw == g.m, op, ": weight group axis (", g.mw, ") must equal the input's (", g.m, ")");
  set_conv_geometry(op, g, stride, padding, dilation);
  if (lift) {
    g.xs[0] = x.stride(0); g.xs[1] = 0; g.xs[2] = x.stride(1); g.xs[3] = x.stride(2); g.xs[4] = x.stride(3);
  } else {
    for (int d = 0; d < 5; ++d) g.xs[d] = x.stride(d);
  }
  // weight.numel() bounds these products (every factor is >= 1)
  const int64_t KK = g.kh * g.kw, K = g.K();
  checked_mul(op, g.n, K, "the group order times the weight's size");
  checked_mul(op, checked_mul(op, g.n, K, "n * K"), std::max<int64_t>(1, g.Co), "n * C_out * K");
  auto lopt = at::TensorOptions().dtype(at::kLong).device(x.device());

  at::Tensor slot;
  if (lift) {
    slot = at::zeros({g.n, 1}, lopt);
  } else {
    TORCH_CHECK(slot_in.dim() == 2 && slot_in.size(0) == g.n && slot_in.size(1) == g.m, op,
                ": slot table must be [", g.n, ", ", g.m, "], got ", slot_in.sizes());
    TORCH_CHECK(slot_in.device() == x.device(), op, ": the slot table is on ", slot_in.device(),
                " but the input is on ", x.device());
    check_permutation_rows(op, slot_in, g.m, "slot");
    slot = slot_in.to(lopt);
  }
  at::Tensor kperm;
  if (!kperm_in.defined() || kperm_in.numel() == 0) {
    kperm = at::arange(KK, lopt).unsqueeze(0).expand({g.n, KK});
  } else {
    TORCH_CHECK(kperm_in.dim() == 2 && kperm_in.size(0) == g.n && kperm_in.size(1) == KK, op,
                ": kernel permutation table must be [", g.n, ", ", KK, "], got ", kperm_in.sizes());
    TORCH_CHECK(kperm_in.device() == x.device(), op, ": the kernel permutation table is on ", kperm_in.device(),
                " but the input is on ", x.device());
    check_permutation_rows(op, kperm_in, KK, "kernel permutation");
    kperm = kperm_in.to(lopt);
  }
  Prepared p;
  p.xmap = make_pixel_map(op, xmap, g, x.device());
  TORCH_CHECK(lift || p.xmap.identity(), op, ": group_conv reads its input without a pixel map");
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

inline void check_bias(const std::string& op, const c10::optional<at::Tensor>& bias, const Geom& g,
                       const at::Tensor& x) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.Co, op, ": bias must be [", g.Co, "], got ", bias->sizes());
  TORCH_CHECK(bias->device() == x.device() && bias->scalar_type() == x.scalar_type(), op,
              ": bias must match the input's device and dtype");
}

inline void check_grad_out(const std::string& op, const at::Tensor& go, const Prepared& p) {
  const Geom& g = p.geom;
  TORCH_CHECK(go.dim() == 5 && go.size(0) == g.B && go.size(1) == g.n && go.size(2) == g.Co && go.size(3) == g.Ho &&
              go.size(4) == g.Wo, op, ": grad_out must be [", g.B, ", ", g.n, ", ", g.Co, ", ", g.Ho, ", ", g.Wo,
              "], got ", go.sizes());
  TORCH_CHECK(go.device() == p.x.device(), op, ": grad_out is on ", go.device(), " but the input is on ",
              p.x.device());
  TORCH_CHECK(at::isFloatingType(go.scalar_type()), op, ": grad_out must be a floating-point tensor, got ",
              go.scalar_type());
}

inline std::array<bool, 2> grad_mask(const std::string& op, const c10::List<bool>& output_mask) {
  TORCH_CHECK(output_mask.size() >= 2, op, ": output_mask needs at least 2 entries (grad input, grad weight), got ",
              output_mask.size());
  return {output_mask.get(0), output_mask.get(1)};
}

// ------------------------------------------------------------------ the op entry points
// Device (a struct in the device's kernel file) provides:
//   static constexpr const char* kName;                      "cpu" or "cuda"
//   static void check_input(const std::string& op, const at::Tensor& x);   device and dtype
//   static at::Tensor forward(const std::string& op, const Prepared&, const c10::optional<at::Tensor>& bias);
//   static std::tuple<at::Tensor, at::Tensor> backward(const std::string& op, const Prepared&,
//                                                      const at::Tensor& grad_out, const at::Tensor& weight,
//                                                      std::array<bool, 2> output_mask);
// Op names in messages: "equifast_C::lift_conv (cpu)".
template <class Device>
std::string op_name(const char* op) {
  return std::string("equifast_C::") + op + " (" + Device::kName + ")";
}

template <class Device>
at::Tensor lift_conv_forward(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& xmap, const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const std::string op = op_name<Device>("lift_conv");
  Device::check_input(op, x);
  const Prepared p = prepare(op, x, weight, at::Tensor(), xmap, kperm, order, stride, padding, dilation);
  check_bias(op, bias, p.geom, x);
  return Device::forward(op, p, bias);
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> lift_conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& weight, const at::Tensor& xmap,
                                                      const at::Tensor& kperm, int64_t order, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      const c10::List<bool>& output_mask) {
  const std::string op = op_name<Device>("lift_conv_backward");
  Device::check_input(op, x);
  const Prepared p = prepare(op, x, weight, at::Tensor(), xmap, kperm, order, stride, padding, dilation);
  check_grad_out(op, grad_out, p);
  return Device::backward(op, p, grad_out, weight, grad_mask(op, output_mask));
}

inline void check_slot_given(const std::string& op, const at::Tensor& slot) {
  TORCH_CHECK(slot.defined(), op, ": the slot table is required");
}

template <class Device>
at::Tensor group_conv_forward(const at::Tensor& s, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& slot, const at::Tensor& kperm, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const std::string op = op_name<Device>("group_conv");
  Device::check_input(op, s);
  check_slot_given(op, slot);
  TORCH_CHECK(s.dim() == 5, op, ": expected input of shape [B, n, C_in, H, W], got ", s.sizes());
  const Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  check_bias(op, bias, p.geom, s);
  return Device::forward(op, p, bias);
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> group_conv_backward(const at::Tensor& grad_out, const at::Tensor& s,
                                                       const at::Tensor& weight, const at::Tensor& slot,
                                                       const at::Tensor& kperm, at::IntArrayRef stride,
                                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                                       const c10::List<bool>& output_mask) {
  const std::string op = op_name<Device>("group_conv_backward");
  Device::check_input(op, s);
  check_slot_given(op, slot);
  TORCH_CHECK(s.dim() == 5, op, ": expected input of shape [B, n, C_in, H, W], got ", s.sizes());
  const Prepared p = prepare(op, s, weight, slot, at::Tensor(), kperm, s.size(1), stride, padding, dilation);
  check_grad_out(op, grad_out, p);
  return Device::backward(op, p, grad_out, weight, grad_mask(op, output_mask));
}

// Registers the four entry points of one device (used inside its TORCH_LIBRARY_IMPL block).
template <class Device>
void register_kernels(torch::Library& m) {
  m.impl("lift_conv", &lift_conv_forward<Device>);
  m.impl("lift_conv_backward", &lift_conv_backward<Device>);
  m.impl("group_conv", &group_conv_forward<Device>);
  m.impl("group_conv_backward", &group_conv_backward<Device>);
}

}  // namespace equifast
