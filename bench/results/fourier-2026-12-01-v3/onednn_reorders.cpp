// What a oneDNN driven directly with its blocked layout (no NCHW <-> nChw16c reorders) would save per
// unit convolution: one 3x3 convolution C -> C on [8, C, 32, 32] float32, padding 1, timed four ways,
// interleaved in one loop (medians of 50 rounds after 10 warm-up rounds):
//   forward on blocked (nChw16c) tensors; the same with the input reordered in from NCHW and the output
//   reordered back (what PyTorch's CPU convolution does for a contiguous tensor); forward on NHWC
//   tensors; and the weight gradient on blocked tensors against the same with src and diff_dst reordered
//   in from NCHW and diff_weights reordered back to OIHW.
// C = 32 is a unit convolution of C4 at 32 channels; C = 128 the dense bank's (4 x 32 channels).
// Build and run: run.sh in this folder (oneDNN from the onednn-cpu-gomp wheel, OpenMP threads).
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  const int B = 8, C = argc > 1 ? std::atoi(argv[1]) : 32, H = 32, kRounds = 60, kWarm = 10;
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const memory::dims src{B, C, H, H}, wei{C, C, 3, 3}, dst{B, C, H, H}, st{1, 1}, pad{1, 1};
  auto fill = [](memory& m) {
    float* p = static_cast<float*>(m.get_data_handle());
    std::fill(p, p + m.get_desc().get_size() / sizeof(float), 0.5f);
  };
  auto fwd = [&](tag t) {
    return convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct,
                                               memory::desc(src, dt::f32, t), memory::desc(wei, dt::f32, tag::any),
                                               memory::desc(dst, dt::f32, t), st, pad, pad);
  };
  auto pb = fwd(tag::nChw16c), ph = fwd(tag::nhwc);
  auto pw = convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, pb.src_desc(),
                                                         memory::desc(wei, dt::f32, tag::any), pb.dst_desc(), st,
                                                         pad, pad, pb);
  memory Sn(memory::desc(src, dt::f32, tag::nchw), eng), Dn(memory::desc(dst, dt::f32, tag::nchw), eng),
      Gn(memory::desc(dst, dt::f32, tag::nchw), eng), DWn(memory::desc(wei, dt::f32, tag::oihw), eng);
  memory Sb(pb.src_desc(), eng), Wb(pb.weights_desc(), eng), Db(pb.dst_desc(), eng);
  memory Sh(ph.src_desc(), eng), Wh(ph.weights_desc(), eng), Dh(ph.dst_desc(), eng);
  memory Gb(pw.diff_dst_desc(), eng), DW(pw.diff_weights_desc(), eng);
  for (memory* m : {&Sn, &Gn, &Sb, &Wb, &Sh, &Wh, &Gb}) fill(*m);
  convolution_forward conv_b(pb), conv_h(ph);
  convolution_backward_weights grad_w(pw);
  reorder src_in(Sn, Sb), dst_out(Db, Dn), gy_in(Gn, Gb), gw_out(DW, DWn);
  auto run_b = [&] { conv_b.execute(s, {{DNNL_ARG_SRC, Sb}, {DNNL_ARG_WEIGHTS, Wb}, {DNNL_ARG_DST, Db}}); };
  auto run_w = [&] { grad_w.execute(s, {{DNNL_ARG_SRC, Sb}, {DNNL_ARG_DIFF_DST, Gb}, {DNNL_ARG_DIFF_WEIGHTS, DW}}); };
  std::vector<double> t[5];
  for (int k = 0; k < kRounds; ++k) {
    double a = now();
    run_b();
    double b = now();
    src_in.execute(s, Sn, Sb); run_b(); dst_out.execute(s, Db, Dn);
    double c = now();
    conv_h.execute(s, {{DNNL_ARG_SRC, Sh}, {DNNL_ARG_WEIGHTS, Wh}, {DNNL_ARG_DST, Dh}});
    double d = now();
    run_w();
    double e = now();
    src_in.execute(s, Sn, Sb); gy_in.execute(s, Gn, Gb); run_w(); gw_out.execute(s, DW, DWn);
    double f = now();
    if (k >= kWarm) {
      t[0].push_back(b - a); t[1].push_back(c - b); t[2].push_back(d - c); t[3].push_back(e - d); t[4].push_back(f - e);
    }
  }
  double m[5];
  for (int i = 0; i < 5; ++i) {
    std::sort(t[i].begin(), t[i].end());
    m[i] = t[i][t[i].size() / 2] * 1e3;
  }
  std::printf("| %d | %s | %.3f | %.3f | %.2f | %.3f | %.3f | %.3f | %.2f |\n", C, std::getenv("OMP_NUM_THREADS"), m[0],
              m[1], m[1] / m[0], m[2], m[3], m[4], m[4] / m[3]);
  return 0;
}
