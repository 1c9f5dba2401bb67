// Fused CPU kernels of synchronized batch normalization (deeplab.dist.syncbn), loaded into
// MXNet with mx.library.load (lib_api.h, MXNet >= 1.9). Built at first use by
// deeplab.dist.fastbn.
//
// Tensors are NCHW or any (N, C, ...) layout with channels on axis 1; float32 only. Moments are
// accumulated in double, per (n, c) row in two passes (the row is still in cache for the second)
// and combined over rows and workers with Chan's formula, so they are exact to float32 whatever
// the activations' mean.
//
// Ops (the Python layer wires them around one collective):
//   deeplab_bn_moments(x) -> (3, C): [pixel count, mean, biased variance] of this worker's x.
//   deeplab_bn_combine(gathered (3 W, C)) -> (3, C): [mean, biased variance, pixel count] of
//       the union of W workers' moments (their (3, C) moments one below the other, as an
//       allgather concatenates them).
//   deeplab_bn_combine_grad(d (3, C), local (3, C), combined (3, C)) -> d local (3, C): the
//       gradient of one worker's moments given the gradient of the combined ones summed over
//       workers (the backward of the collective).
//   deeplab_bn_normalize(x, stats (3, C), gamma, beta; eps, fix_gamma) -> y =
//       gamma * (x - mean) / sqrt(var + eps) + beta with [mean, var] = stats[0:2].
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

using Attrs = std::unordered_map<std::string, std::string>;

struct Dims {
  int64_t n, c, l;  // batch, channels, elements per (n, c) row
};

Dims dims_of(const MXTensor& t) {
  Dims d{t.shape[0], t.shape[1], 1};
  for (size_t i = 2; i < t.shape.size(); ++i) d.l *= t.shape[i];
  return d;
}

double attr_double(const Attrs& attrs, const char* key, double fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stod(it->second);
}

bool attr_bool(const Attrs& attrs, const char* key) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return false;
  const std::string& v = it->second;
  return v == "1" || v == "True" || v == "true";
}

MXReturnValue all_float32(const std::vector<int>* types, const char* op) {
  for (size_t i = 0; i < types->size(); ++i) {
    if (types->at(i) != kFloat32) {
      MX_ERROR_MSG << op << ": input " << i << " is not float32";
      return MX_FAIL;
    }
  }
  return MX_SUCCESS;
}

// ---- deeplab_bn_moments -------------------------------------------------------------------

MXReturnValue moments_forward(const Attrs&, std::vector<MXTensor>* in,
                              std::vector<MXTensor>* out, const OpResource&) {
  const float* x = in->at(0).data<float>();
  float* s = out->at(0).data<float>();
  const Dims d = dims_of(in->at(0));
  #pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < d.c; ++c) {
    double count = 0, mean = 0, m2 = 0;  // Chan's running union of the rows so far
    for (int64_t i = 0; i < d.n; ++i) {
      const float* row = x + (i * d.c + c) * d.l;
      double sum = 0;
      #pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < d.l; ++j) sum += row[j];
      const double row_mean = sum / d.l;
      double sq = 0;
      #pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < d.l; ++j) {
        const double e = row[j] - row_mean;
        sq += e * e;
      }
      const double total = count + d.l, delta = row_mean - mean;
      mean += delta * d.l / total;
      m2 += sq + delta * delta * count * d.l / total;
      count = total;
    }
    s[c] = static_cast<float>(count);
    s[d.c + c] = static_cast<float>(mean);
    s[2 * d.c + c] = static_cast<float>(count > 0 ? m2 / count : 0);
  }
  return MX_SUCCESS;
}

// inputs: d stats, x, stats; output: dx = d_mean / n + d_var * 2 (x - mean) / n
MXReturnValue moments_backward(const Attrs&, std::vector<MXTensor>* in,
                               std::vector<MXTensor>* out, const OpResource&) {
  const float* ds = in->at(0).data<float>();
  const float* x = in->at(1).data<float>();
  const float* s = in->at(2).data<float>();
  float* dx = out->at(0).data<float>();
  const Dims d = dims_of(in->at(1));
  #pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < d.n; ++i) {
    for (int64_t c = 0; c < d.c; ++c) {
      const float n = s[c], mean = s[d.c + c];
      const float a = 2 * ds[2 * d.c + c] / n, b = ds[d.c + c] / n;
      const float* row = x + (i * d.c + c) * d.l;
      float* drow = dx + (i * d.c + c) * d.l;
      #pragma omp simd
      for (int64_t j = 0; j < d.l; ++j) drow[j] = a * (row[j] - mean) + b;
    }
  }
  return MX_SUCCESS;
}

MXReturnValue moments_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue moments_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  out->at(0) = kFloat32;
  return all_float32(in, "deeplab_bn_moments");
}

MXReturnValue moments_shape(const Attrs&, std::vector<std::vector<unsigned>>* in,
                            std::vector<std::vector<unsigned>>* out) {
  if (in->at(0).size() < 2) {
    MX_ERROR_MSG << "deeplab_bn_moments: input must have a channel axis 1";
    return MX_FAIL;
  }
  out->at(0) = {3, in->at(0)[1]};
  return MX_SUCCESS;
}

// ---- deeplab_bn_combine / deeplab_bn_combine_grad -----------------------------------------

void combine(const float* g, int64_t workers, int64_t c, float* out) {
  for (int64_t k = 0; k < c; ++k) {
    double total = 0, sum = 0;
    for (int64_t r = 0; r < workers; ++r) {
      const float* w = g + r * 3 * c;
      total += w[k];
      sum += static_cast<double>(w[k]) * w[c + k];
    }
    const double mean = sum / total;
    double var = 0;
    for (int64_t r = 0; r < workers; ++r) {
      const float* w = g + r * 3 * c;
      const double e = w[c + k] - mean;
      var += w[k] * (w[2 * c + k] + e * e);
    }
    out[k] = static_cast<float>(mean);
    out[c + k] = static_cast<float>(var / total);
    out[2 * c + k] = static_cast<float>(total);
  }
}

// d local = [0, n_r / N (D_mean + 2 (m_r - mean) D_var), n_r / N D_var]
void combine_grad(const float* d, const float* local, const float* combined, int64_t c,
                  float* dlocal) {
  for (int64_t k = 0; k < c; ++k) {
    const double w = static_cast<double>(local[k]) / combined[2 * c + k];
    dlocal[k] = 0;
    dlocal[c + k] = static_cast<float>(
        w * (d[k] + 2.0 * (static_cast<double>(local[c + k]) - combined[k]) * d[c + k]));
    dlocal[2 * c + k] = static_cast<float>(w * d[c + k]);
  }
}

MXReturnValue combine_forward(const Attrs&, std::vector<MXTensor>* in,
                              std::vector<MXTensor>* out, const OpResource&) {
  MXTensor& g = in->at(0);
  combine(g.data<float>(), g.shape[0] / 3, g.shape[1], out->at(0).data<float>());
  return MX_SUCCESS;
}

// inputs: d combined, gathered, combined; output: d gathered
MXReturnValue combine_backward(const Attrs&, std::vector<MXTensor>* in,
                               std::vector<MXTensor>* out, const OpResource&) {
  MXTensor& g = in->at(1);
  const int64_t workers = g.shape[0] / 3, c = g.shape[1];
  for (int64_t r = 0; r < workers; ++r) {
    combine_grad(in->at(0).data<float>(), g.data<float>() + r * 3 * c,
                 in->at(2).data<float>(), c, out->at(0).data<float>() + r * 3 * c);
  }
  return MX_SUCCESS;
}

MXReturnValue combine_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue combine_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  out->at(0) = kFloat32;
  return all_float32(in, "deeplab_bn_combine");
}

MXReturnValue combine_shape(const Attrs&, std::vector<std::vector<unsigned>>* in,
                            std::vector<std::vector<unsigned>>* out) {
  const auto& s = in->at(0);
  if (s.size() != 2 || s[0] == 0 || s[0] % 3) {
    MX_ERROR_MSG << "deeplab_bn_combine: input must be (3 x workers, C)";
    return MX_FAIL;
  }
  out->at(0) = {3, s[1]};
  return MX_SUCCESS;
}

MXReturnValue combine_grad_forward(const Attrs&, std::vector<MXTensor>* in,
                                   std::vector<MXTensor>* out, const OpResource&) {
  combine_grad(in->at(0).data<float>(), in->at(1).data<float>(), in->at(2).data<float>(),
               in->at(1).shape[1], out->at(0).data<float>());
  return MX_SUCCESS;
}

MXReturnValue combine_grad_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue combine_grad_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  out->at(0) = kFloat32;
  return all_float32(in, "deeplab_bn_combine_grad");
}

MXReturnValue combine_grad_shape(const Attrs&, std::vector<std::vector<unsigned>>* in,
                                 std::vector<std::vector<unsigned>>* out) {
  for (const auto& s : *in) {
    if (s.size() != 2 || s[0] != 3 || s[1] != in->at(1)[1]) {
      MX_ERROR_MSG << "deeplab_bn_combine_grad: inputs must be (3, C)";
      return MX_FAIL;
    }
  }
  out->at(0) = in->at(1);
  return MX_SUCCESS;
}

// ---- deeplab_bn_normalize -----------------------------------------------------------------

MXReturnValue normalize_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                std::vector<MXTensor>* out, const OpResource&) {
  const float* x = in->at(0).data<float>();
  const float* s = in->at(1).data<float>();
  const float* gamma = in->at(2).data<float>();
  const float* beta = in->at(3).data<float>();
  float* y = out->at(0).data<float>();
  const Dims d = dims_of(in->at(0));
  const double eps = attr_double(attrs, "eps", 1e-5);
  const bool fix_gamma = attr_bool(attrs, "fix_gamma");
  #pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < d.n; ++i) {
    for (int64_t c = 0; c < d.c; ++c) {
      const float mean = s[c];
      const float scale = static_cast<float>((fix_gamma ? 1.0 : gamma[c]) /
                                             std::sqrt(static_cast<double>(s[d.c + c]) + eps));
      const float shift = beta[c];
      const float* row = x + (i * d.c + c) * d.l;
      float* yrow = y + (i * d.c + c) * d.l;
      #pragma omp simd
      for (int64_t j = 0; j < d.l; ++j) yrow[j] = (row[j] - mean) * scale + shift;
    }
  }
  return MX_SUCCESS;
}

// inputs: dy, x, stats, gamma, beta, y; outputs: dx (through y only: the statistics' own
// gradient reaches x through deeplab_bn_moments), d stats, d gamma, d beta.
MXReturnValue normalize_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                 std::vector<MXTensor>* out, const OpResource&) {
  const float* dy = in->at(0).data<float>();
  const float* x = in->at(1).data<float>();
  const float* s = in->at(2).data<float>();
  const float* gamma = in->at(3).data<float>();
  float* dx = out->at(0).data<float>();
  float* ds = out->at(1).data<float>();
  float* dgamma = out->at(2).data<float>();
  float* dbeta = out->at(3).data<float>();
  const Dims d = dims_of(in->at(1));
  const double eps = attr_double(attrs, "eps", 1e-5);
  const bool fix_gamma = attr_bool(attrs, "fix_gamma");
  #pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < d.c; ++c) {
    const float mean = s[c];
    const double inv_std = 1.0 / std::sqrt(static_cast<double>(s[d.c + c]) + eps);
    const double g = fix_gamma ? 1.0 : gamma[c];
    const float scale = static_cast<float>(g * inv_std);
    double s1 = 0, s2 = 0;  // sum dy, sum dy (x - mean)
    for (int64_t i = 0; i < d.n; ++i) {
      const float* row = x + (i * d.c + c) * d.l;
      const float* drow = dy + (i * d.c + c) * d.l;
      float* dxrow = dx + (i * d.c + c) * d.l;
      double r1 = 0, r2 = 0;
      #pragma omp simd reduction(+ : r1, r2)
      for (int64_t j = 0; j < d.l; ++j) {
        r1 += drow[j];
        r2 += static_cast<double>(drow[j]) * (row[j] - mean);
      }
      s1 += r1;
      s2 += r2;
      #pragma omp simd
      for (int64_t j = 0; j < d.l; ++j) dxrow[j] = scale * drow[j];
    }
    dbeta[c] = static_cast<float>(s1);
    dgamma[c] = fix_gamma ? 0.0f : static_cast<float>(s2 * inv_std);
    ds[c] = static_cast<float>(-g * inv_std * s1);
    ds[d.c + c] = static_cast<float>(-0.5 * g * inv_std * inv_std * inv_std * s2);
    ds[2 * d.c + c] = 0;
  }
  return MX_SUCCESS;
}

MXReturnValue normalize_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 4;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue normalize_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  out->at(0) = kFloat32;
  return all_float32(in, "deeplab_bn_normalize");
}

MXReturnValue normalize_shape(const Attrs&, std::vector<std::vector<unsigned>>* in,
                              std::vector<std::vector<unsigned>>* out) {
  const auto& x = in->at(0);
  if (x.size() < 2) {
    MX_ERROR_MSG << "deeplab_bn_normalize: input must have a channel axis 1";
    return MX_FAIL;
  }
  const unsigned c = x[1];
  if (in->at(1) != std::vector<unsigned>{3, c} || in->at(2) != std::vector<unsigned>{c} ||
      in->at(3) != std::vector<unsigned>{c}) {
    MX_ERROR_MSG << "deeplab_bn_normalize: expected stats (3, " << c << "), gamma and beta ("
                 << c << ")";
    return MX_FAIL;
  }
  out->at(0) = x;
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(deeplab_bn_moments)
    .setForward(moments_forward, "cpu")
    .setBackward(moments_backward, "cpu")
    .setParseAttrs(moments_attrs)
    .setInferType(moments_type)
    .setInferShape(moments_shape);

REGISTER_OP(deeplab_bn_combine)
    .setForward(combine_forward, "cpu")
    .setBackward(combine_backward, "cpu")
    .setParseAttrs(combine_attrs)
    .setInferType(combine_type)
    .setInferShape(combine_shape);

REGISTER_OP(deeplab_bn_combine_grad)
    .setForward(combine_grad_forward, "cpu")
    .setParseAttrs(combine_grad_attrs)
    .setInferType(combine_grad_type)
    .setInferShape(combine_grad_shape);

REGISTER_OP(deeplab_bn_normalize)
    .setForward(normalize_forward, "cpu")
    .setBackward(normalize_backward, "cpu")
    .setParseAttrs(normalize_attrs)
    .setInferType(normalize_type)
    .setInferShape(normalize_shape);

MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "deeplab SyncBN ops need MXNet >= 1.9, got version " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
