// SPDX-License-Identifier: Apache-2.0
// Weight sparsification and codebooks: the schedule against its formula, masks through training,
// N:M, allocations, k-means and centroid gradients against reference computations, and the
// compact .pfm storage (bit-exact round trips, real sizes, corrupted files).
#include "pocketflow/sparsity.h"

#include <cmath>
#include <cstring>
#include <random>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <zlib.h>

#include "pocketflow/codebook.h"
#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/quant.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"
#include "pocketflow/weight_codec.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

using testing::expect_error;
using testing::TempDir;

TEST(SparsityScheduleTest, FollowsZhuGuptaFormula) {
    const double sf = 0.9, alpha = 3;
    const int64_t tb = 100, te = 1100;
    for (int64_t t : {0, 50, 100, 101, 350, 600, 999, 1099, 1100, 5000}) {
        const double p = std::clamp(double(t - tb) / double(te - tb), 0.0, 1.0);
        const double want = sf * (1 - std::pow(1 - p, alpha));
        EXPECT_NEAR(scheduled_sparsity(sf, t, tb, te, alpha), want, 1e-12) << "t = " << t;
    }
    EXPECT_DOUBLE_EQ(scheduled_sparsity(0.5, 10, 10, 10, 3), 0.5);    // begin == end: at once
    EXPECT_NEAR(scheduled_sparsity(0.8, 50, 0, 100, 1), 0.4, 1e-12);  // alpha 1: linear
}

Node linear_node(const at::Tensor& w) {
    Node n;
    n.name = "fc";
    n.op = Op::kLinear;
    n.attrs.out_channels = w.size(0);
    n.params["weight"] = w.clone();
    n.params["bias"] = at::zeros({w.size(0)});
    return n;
}

TEST(SparsityMaskTest, MagnitudeMaskKeepsTheLargestAndNeverRegrows) {
    Node n =
        linear_node(at::tensor({0.5f, -0.1f, 0.3f, -0.7f, 0.05f, 0.2f, -0.4f, 0.6f}).view({2, 4}));
    set_magnitude_mask(n, 0.5);
    const at::Tensor m = n.buffers.at("weight_mask");
    EXPECT_TRUE(m.equal(at::tensor({1, 0, 0, 1, 0, 0, 1, 1}).to(at::kBool).view({2, 4})));
    EXPECT_EQ(count_sparsity(n).zeros, 4);
    // A pruned weight that moved (it cannot in training, but say it did) stays pruned.
    n.params.at("weight").view({-1})[1] = 9.0;
    n.params.at("weight").mul_(n.buffers.at("weight_mask"));
    set_magnitude_mask(n, 0.25);
    EXPECT_FALSE(n.buffers.at("weight_mask").view({-1})[1].item<bool>());
    EXPECT_EQ(count_sparsity(n).zeros, 4);
    expect_error<InputError>([&] { set_magnitude_mask(n, 1.0); }, "[0, 1)");
}

TEST(SparsityMaskTest, TwoOfFourAlongInputChannels) {
    torch::manual_seed(1);
    Node n;
    n.name = "conv";
    n.op = Op::kConv2d;
    n.params["weight"] = torch::randn({3, 8, 3, 3});
    const at::Tensor before = n.params.at("weight").clone();
    ASSERT_TRUE(nm_applicable(n, 4));
    set_nm_mask(n, 2, 4);
    const at::Tensor w = n.params.at("weight");
    for (int64_t o = 0; o < 3; ++o) {
        for (int64_t y = 0; y < 3; ++y) {
            for (int64_t x = 0; x < 3; ++x) {
                for (int64_t g = 0; g < 2; ++g) {
                    at::Tensor group = w.index({o, torch::indexing::Slice(4 * g, 4 * g + 4), y, x});
                    at::Tensor orig =
                        before.index({o, torch::indexing::Slice(4 * g, 4 * g + 4), y, x}).abs();
                    EXPECT_EQ(group.count_nonzero().item<int64_t>(), 2);
                    // The kept ones are the two largest of the group.
                    at::Tensor kept = orig.masked_select(group.ne(0));
                    at::Tensor dropped = orig.masked_select(group.eq(0));
                    EXPECT_GE(kept.min().item<float>(), dropped.max().item<float>());
                }
            }
        }
    }
    Node first;
    first.op = Op::kConv2d;
    first.params["weight"] = torch::randn({4, 1, 3, 3});
    EXPECT_FALSE(nm_applicable(first, 4));
}

TEST(SparsityAllocationTest, LogSizeMeetsTheTargetAndPrunesLargeLayersMore) {
    const std::vector<int64_t> sizes = {150, 2400, 48000, 10080, 840};
    const auto s = log_size_sparsities(sizes, 0.9);
    double pruned = 0, total = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
        pruned += s[i] * double(sizes[i]);
        total += double(sizes[i]);
        EXPECT_LE(s[i], 0.99);
    }
    EXPECT_NEAR(pruned / total, 0.9, 1e-6);
    EXPECT_LT(s[0], s[1]);
    EXPECT_LT(s[1], s[2]);
    EXPECT_THROW(log_size_sparsities(sizes, 0.995), InputError);
}

TEST(SparsityAllocationTest, GlobalThresholdCountsEachLayersShare) {
    const std::vector<at::Tensor> w = {at::tensor({0.1f, 0.2f, 5.0f, 6.0f}),
                                       at::tensor({0.05f, 3.0f, 0.3f, 4.0f, 0.15f, 7.0f})};
    // The 5 smallest of 10: 0.05, 0.1, 0.15, 0.2, 0.3 -> 2 of layer 0, 3 of layer 1.
    const auto s = global_magnitude_sparsities(w, 0.5);
    EXPECT_NEAR(s[0], 0.5, 1e-12);
    EXPECT_NEAR(s[1], 0.5, 1e-12);
    const auto s2 = global_magnitude_sparsities(w, 0.3);  // 0.05, 0.1, 0.15
    EXPECT_NEAR(s2[0], 0.25, 1e-12);
    EXPECT_NEAR(s2[1], 2.0 / 6.0, 1e-12);
}

struct TinyData {
    DataConfig cfg;
    DataBundle data;
    TinyData() {
        cfg.dataset = "synthetic";
        cfg.synthetic_train = 256;
        cfg.synthetic_test = 64;
        cfg.synthetic_classes = 4;
        cfg.synthetic_shape = {1, 12, 12};
        cfg.batch_size = 32;
        cfg.val_size = 0;
        cfg.mean = {0.5};
        cfg.std = {0.3};
        data = load_data(cfg, 1);
    }
};

TEST(SparsityTrainingTest, MaskedWeightsStayExactlyZeroThroughTraining) {
    torch::manual_seed(0);
    TinyData d;
    Graph g = build_zoo_model("lenet5", 4, {1, 12, 12}, 3);
    for (auto& n : g.nodes()) {
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            set_magnitude_mask(n, 0.7);
        }
    }
    const Graph before = g.clone();
    auto model = std::make_shared<Model>(std::move(g), ModelMeta{});
    auto teacher =
        std::make_shared<Model>(build_zoo_model("lenet5", 4, {1, 12, 12}, 4), ModelMeta{});
    TrainConfig tc;
    tc.epochs = 2;
    tc.optimizer.lr = 0.05;
    tc.optimizer.momentum = 0.9;
    tc.optimizer.weight_decay = 1e-3;  // decay and momentum would move zeros without the mask
    tc.log_every = 1000;
    Trainer trainer(tc, nullptr, "t");
    DistillationConfig dist;
    dist.enabled = true;
    trainer.set_teacher(teacher, dist);
    int64_t steps = 0;
    trainer.add_after_step([&](Model& m, int64_t) {
        ++steps;
        for (const auto& n : m.graph().nodes()) {
            if (has_mask(n)) {
                const at::Tensor& w = n.params.at("weight");
                ASSERT_EQ(w.masked_select(n.buffers.at("weight_mask").logical_not())
                              .abs()
                              .max()
                              .item<float>(),
                          0.0f)
                    << n.name;
            }
        }
    });
    trainer.fit(*model, d.data, d.cfg, 1);
    EXPECT_EQ(steps, 16);
    for (size_t i = 0; i < before.nodes().size(); ++i) {
        const Node& a = before.nodes()[i];
        const Node& b = model->graph().nodes()[i];
        if (has_mask(a)) {
            const at::Tensor keep = a.buffers.at("weight_mask");
            EXPECT_TRUE(b.buffers.at("weight_mask").equal(keep));
            EXPECT_EQ(count_sparsity(b).zeros, count_sparsity(a).zeros) << a.name;
            // The kept weights trained.
            EXPECT_FALSE(b.params.at("weight").masked_select(keep).equal(
                a.params.at("weight").masked_select(keep)));
        }
    }
}

// --------------------------------------------------------------------------------------------
// Codebooks

/// Reference Lloyd k-means: brute-force nearest centroid (ties to the lower index), means.
std::vector<double> reference_kmeans(const std::vector<double>& x,
                                     std::vector<double> c,
                                     int iters) {
    std::vector<int> assign(x.size(), -1);
    for (int it = 0; it < iters; ++it) {
        std::vector<int> next(x.size());
        for (size_t i = 0; i < x.size(); ++i) {
            int best = 0;
            for (size_t j = 1; j < c.size(); ++j) {
                if (std::abs(x[i] - c[j]) < std::abs(x[i] - c[static_cast<size_t>(best)])) {
                    best = static_cast<int>(j);
                }
            }
            next[i] = best;
        }
        if (next == assign) {
            break;
        }
        assign = next;
        std::vector<double> sum(c.size(), 0), count(c.size(), 0);
        for (size_t i = 0; i < x.size(); ++i) {
            sum[static_cast<size_t>(assign[i])] += x[i];
            count[static_cast<size_t>(assign[i])] += 1;
        }
        for (size_t j = 0; j < c.size(); ++j) {
            if (count[j] > 0) {
                c[j] = sum[j] / count[j];
            }
        }
        std::sort(c.begin(), c.end());
    }
    return c;
}

TEST(CodebookTest, KmeansAndAssignmentMatchAReference) {
    std::mt19937 rng(5);
    std::normal_distribution<double> normal(0, 1);
    std::vector<double> x(3000);
    for (auto& v : x) {
        v = normal(rng) * (normal(rng) > 0 ? 0.3 : 1.0);
    }
    at::Tensor values = at::tensor(x).to(at::kFloat);
    for (size_t i = 0; i < x.size(); ++i) {
        x[i] = values[static_cast<int64_t>(i)].item<float>();  // the reference sees the floats
    }
    for (auto init :
         {CodebookInit::kLinear, CodebookInit::kQuantile, CodebookInit::kKmeansPlusPlus}) {
        at::Tensor c0 = init_centroids(values, 16, init, 9);
        ASSERT_EQ(c0.numel(), 16);
        std::vector<double> start(16);
        for (int j = 0; j < 16; ++j) {
            start[static_cast<size_t>(j)] = c0[j].item<double>();
        }
        int rounds = 0;
        at::Tensor c = kmeans_1d(values, c0, 200, &rounds);
        std::vector<double> ref = reference_kmeans(x, start, 200);
        for (int j = 0; j < 16; ++j) {
            EXPECT_NEAR(c[j].item<double>(), ref[static_cast<size_t>(j)], 1e-5) << "centroid " << j;
        }
        EXPECT_GT(rounds, 1);
        // Assignment = brute-force nearest.
        at::Tensor a = assign_centroids(values, c);
        at::Tensor brute = (values.view({-1, 1}) - c.view({1, -1})).abs().argmin(1);
        at::Tensor da = (values - c.index_select(0, a)).abs();
        at::Tensor db = (values - c.index_select(0, brute)).abs();
        EXPECT_TRUE(at::allclose(da, db));
    }
    // Initialisations by hand.
    at::Tensor v = at::arange(0, 8).to(at::kFloat);  // 0..7
    EXPECT_TRUE(at::allclose(init_centroids(v, 4, CodebookInit::kLinear, 0),
                             at::tensor({0.0f, 7.0f / 3, 14.0f / 3, 7.0f})));
    EXPECT_TRUE(init_centroids(v, 4, CodebookInit::kQuantile, 0)
                    .equal(at::tensor({1.0f, 3.0f, 5.0f, 7.0f})));
    EXPECT_TRUE(init_centroids(values, 8, CodebookInit::kKmeansPlusPlus, 3)
                    .equal(init_centroids(values, 8, CodebookInit::kKmeansPlusPlus, 3)));
}

TEST(CodebookTest, CentroidGradientIsTheSumOfItsWeightsGradients) {
    torch::manual_seed(2);
    Graph g({1, 4, 4});
    int x = g.add_conv("conv", g.input(), 1, 4, 3, 1, 1);
    x = g.add_unary("relu", Op::kReLU, x);
    x = g.add_unary("flat", Op::kFlatten, x);
    x = g.add_linear("fc", x, 64, 3);
    g.set_output(x);
    init_weights(g, 1);
    Node& conv = g.nodes()[1];
    set_magnitude_mask(conv, 0.3);
    set_codebook(conv, 2, CodebookInit::kLinear, 20, 0);
    set_codebook(g.nodes()[4], 3, CodebookInit::kQuantile, 20, 0);
    Model model(g.clone(), ModelMeta{});
    model.train();
    at::Tensor input = torch::randn({5, 1, 4, 4});
    at::Tensor labels = at::tensor({0, 1, 2, 1, 0}, at::kLong);
    cross_entropy(model.forward(input), labels, 0).backward();
    // Reference: the same network with plain dense weights; a centroid sums its weights' grads.
    Graph dense = g.clone();
    for (auto& n : dense.nodes()) {
        n.params.erase("codebook");
        n.buffers.erase("weight_index");
        n.buffers.erase("weight_mask");
    }
    Model ref(std::move(dense), ModelMeta{});
    ref.train();
    cross_entropy(ref.forward(input), labels, 0).backward();
    for (const char* name : {"conv", "fc"}) {
        const Node& n = model.graph().nodes()[static_cast<size_t>(g.find(name))];
        const Node& r = ref.graph().nodes()[static_cast<size_t>(g.find(name))];
        at::Tensor wg = r.params.at("weight").grad().contiguous().view({-1});
        if (has_mask(n)) {
            wg = wg * n.buffers.at("weight_mask").reshape({-1});
        }
        const int64_t k = n.params.at("codebook").numel();
        at::Tensor want = at::zeros({k}).index_add_(
            0, n.buffers.at("weight_index").reshape({-1}).to(at::kLong), wg);
        EXPECT_TRUE(at::allclose(n.params.at("codebook").grad(), want, 1e-5, 1e-6)) << name;
        EXPECT_FALSE(n.params.at("weight").grad().defined());  // only the centroids train
    }
}

TEST(CodebookTest, SparseLayerKeepsItsZerosAndTrainingKeepsIndices) {
    torch::manual_seed(3);
    Node n = linear_node(torch::randn({16, 32}));
    set_magnitude_mask(n, 0.75);
    const CodebookReport r = set_codebook(n, 4, CodebookInit::kKmeansPlusPlus, 50, 1);
    EXPECT_EQ(r.clustered, 128);
    const at::Tensor& w = n.params.at("weight");
    EXPECT_EQ(count_sparsity(n).zeros, 16 * 32 - 128);
    // Every non-zero is one of the 16 centroids.
    at::Tensor nz = w.masked_select(n.buffers.at("weight_mask"));
    at::Tensor c = n.params.at("codebook");
    EXPECT_EQ(std::get<0>((nz.view({-1, 1}) - c.view({1, -1})).abs().min(1)).max().item<float>(),
              0.0f);
    validate_weight_constraints(n);
    Node bad = linear_node(torch::randn({4, 4}));
    bad.params.at("weight")[1][2] = std::nanf("");
    expect_error<InputError>([&] { set_codebook(bad, 2, CodebookInit::kLinear, 5, 0); },
                             "NaN or infinity");
    // After a centroid moves, applying the constraints moves exactly its weights.
    {
        at::NoGradGuard no_grad;
        c[0] += 1.0f;
    }
    Graph g({32});
    g.add(std::move(n));
    g.set_output(1);
    apply_weight_constraints(g);
    const Node& m = g.nodes()[1];
    at::Tensor expect =
        c.index_select(0, m.buffers.at("weight_index").reshape({-1}).to(at::kLong)).view({16, 32}) *
        m.buffers.at("weight_mask");
    EXPECT_TRUE(m.params.at("weight").equal(expect));
}

// --------------------------------------------------------------------------------------------
// Storage

TEST(WeightCodecTest, HuffmanLengthsAreOptimalAndLimited) {
    // The textbook example: frequencies 45, 13, 12, 16, 9, 5 -> lengths 1, 3, 3, 3, 4, 4.
    EXPECT_EQ(huffman_code_lengths({45, 13, 12, 16, 9, 5}), (std::vector<int>{1, 3, 3, 3, 4, 4}));
    EXPECT_EQ(huffman_code_lengths({0, 7, 0}), (std::vector<int>{0, 1, 0}));
    // Fibonacci frequencies make a 20-deep tree; the limit flattens it.
    std::vector<int64_t> fib = {1, 1};
    while (fib.size() < 21) {
        fib.push_back(fib[fib.size() - 1] + fib[fib.size() - 2]);
    }
    auto unlimited = huffman_code_lengths(fib, 30);
    EXPECT_EQ(*std::max_element(unlimited.begin(), unlimited.end()), 20);
    auto lengths = huffman_code_lengths(fib, 15);
    EXPECT_LE(*std::max_element(lengths.begin(), lengths.end()), 15);
    double kraft = 0;
    for (int l : lengths) {
        kraft += std::ldexp(1.0, -l);
    }
    EXPECT_LE(kraft, 1.0 + 1e-12);
}

TEST(WeightCodecTest, SymbolStreamsRoundTripAtEveryWidth) {
    std::mt19937 rng(11);
    for (int bits = 1; bits <= 8; ++bits) {
        std::geometric_distribution<int> skewed(0.3);
        std::vector<uint8_t> syms(1001);
        for (auto& s : syms) {
            s = static_cast<uint8_t>(std::min(skewed(rng), (1 << bits) - 1));
        }
        for (bool huffman : {false, true}) {
            const std::string enc = encode_symbols(syms, bits, huffman);
            EXPECT_EQ(decode_symbols(enc.data(), enc.size(), 1001), syms) << bits << huffman;
            if (!huffman) {
                EXPECT_EQ(enc.size(), 2 + (1001 * bits + 7) / 8);
            }
        }
        const std::string best = encode_symbols(syms, bits);
        if (bits >= 4) {  // a skewed source codes below its width
            EXPECT_EQ(best[0], 1);
            EXPECT_LT(best.size(), 2 + (1001 * bits + 7) / 8);
        }
    }
    const std::string one = encode_symbols(std::vector<uint8_t>(50, 3), 2);
    EXPECT_EQ(decode_symbols(one.data(), one.size(), 50), std::vector<uint8_t>(50, 3));
    const std::string none = encode_symbols({}, 3);
    EXPECT_EQ(none.size(), 2u);
    EXPECT_EQ(decode_symbols(none.data(), none.size(), 0).size(), 0u);
}

TEST(WeightCodecTest, MalformedStreamsAreInputErrors) {
    std::vector<uint8_t> syms(64, 3);
    syms[0] = 0;
    syms[1] = 1;
    syms[2] = 2;
    std::string huff = encode_symbols(syms, 2, true);
    ASSERT_EQ(huff[0], 1);
    std::string bad = huff;
    bad[0] = 7;
    expect_error<InputError>([&] { decode_symbols(bad.data(), bad.size(), 64); }, "unknown header");
    expect_error<InputError>([&] { decode_symbols(huff.data(), huff.size() - 1, 64); },
                             "ends early");
    expect_error<InputError>([&] { decode_symbols(huff.data(), huff.size(), 3); },
                             "after its symbols");
    bad = huff;
    bad[2] = 0x11;  // lengths 1, 1, then more: oversubscribed
    bad[3] = 0x11;
    expect_error<InputError>([&] { decode_symbols(bad.data(), bad.size(), 64); },
                             "impossible code");
    std::string packed = encode_symbols(syms, 2, false);
    expect_error<InputError>([&] { decode_symbols(packed.data(), packed.size(), 65); }, "packed");
}

/// A graph with a conv and a linear layer whose weights are random, sparse at `sparsity` and
/// coded at `bits` (0: float values).
Graph coded_graph(double sparsity, int bits, uint64_t seed) {
    Graph g({2, 6, 6});
    int x = g.add_conv("conv", g.input(), 2, 8, 3, 1, 1);
    x = g.add_unary("flat", Op::kFlatten, x);
    x = g.add_linear("fc", x, 8 * 36, 5);
    g.set_output(x);
    init_weights(g, seed);
    for (int i : {1, 3}) {
        Node& n = g.nodes()[static_cast<size_t>(i)];
        if (sparsity > 0) {
            set_magnitude_mask(n, sparsity);
        }
        if (bits > 0) {
            set_codebook(n, bits, CodebookInit::kLinear, 10, seed);
        }
    }
    return g;
}

void expect_same_tensors(const Graph& a, const Graph& b) {
    ASSERT_EQ(a.nodes().size(), b.nodes().size());
    for (size_t i = 0; i < a.nodes().size(); ++i) {
        for (bool params : {true, false}) {
            const auto& ta = params ? a.nodes()[i].params : a.nodes()[i].buffers;
            const auto& tb = params ? b.nodes()[i].params : b.nodes()[i].buffers;
            ASSERT_EQ(ta.size(), tb.size()) << a.nodes()[i].name;
            for (const auto& [key, t] : ta) {
                ASSERT_TRUE(tb.count(key)) << a.nodes()[i].name << "." << key;
                EXPECT_TRUE(t.equal(tb.at(key))) << a.nodes()[i].name << "." << key;
            }
        }
    }
}

TEST(WeightCodecTest, PfmRoundTripsAreBitExactAtEveryWidthAndSparsity) {
    TempDir dir;
    for (double sparsity : {0.0, 0.3, 0.5, 0.8, 0.95, 0.999}) {
        for (int bits : {0, 2, 3, 4, 5, 6, 7, 8}) {
            if (sparsity == 0 && bits == 0) {
                continue;
            }
            Graph g = coded_graph(sparsity, bits, 7 + static_cast<uint64_t>(bits));
            const std::string path = dir.file("m.pfm");
            save_model(path, g, ModelMeta{});
            ModelFile f = load_model(path);
            SCOPED_TRACE(fmt::format("sparsity {} bits {}", sparsity, bits));
            expect_same_tensors(g, f.graph);
            // The file holds what node_bytes says, plus the header.
            EXPECT_LT(g.weight_bytes(), static_cast<int64_t>(read_file(path).size()));
        }
    }
    // An all-true mask (a layer left dense) costs no position bytes and survives the trip.
    Graph dense_mask = coded_graph(0.0, 3, 2);
    set_magnitude_mask(dense_mask.nodes()[3], 0.0);
    const WeightStorage st = weight_storage(dense_mask.nodes()[3]);
    EXPECT_EQ(st.positions, "dense");
    EXPECT_EQ(st.position_bytes, 0);
    save_model(dir.file("d.pfm"), dense_mask, ModelMeta{});
    expect_same_tensors(dense_mask, load_model(dir.file("d.pfm")).graph);
    // Sparse and uniformly quantized: the integers of the non-zeros.
    Graph g = coded_graph(0.8, 0, 3);
    QuantizeOptions qo;
    qo.layers = {{"conv", LayerBits{4, 8}}, {"fc", LayerBits{6, 8}}};
    prepare_quantization(g, qo);
    snap_quantized_weights(g);
    save_model(dir.file("q.pfm"), g, ModelMeta{});
    ModelFile f = load_model(dir.file("q.pfm"));
    EXPECT_TRUE(f.graph.nodes()[1].params.at("weight").equal(g.nodes()[1].params.at("weight")));
    EXPECT_TRUE(
        f.graph.nodes()[3].buffers.at("weight_mask").equal(g.nodes()[3].buffers.at("weight_mask")));
}

TEST(WeightCodecTest, SparseAndCodebookFilesAreReallySmaller) {
    Graph dense = build_zoo_model("lenet5", 10, {1, 28, 28}, 1);
    const int64_t float_bytes = dense.weight_bytes();
    Graph g = dense.clone();
    for (auto& n : g.nodes()) {
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            set_magnitude_mask(n, 0.8);
        }
    }
    const int64_t sparse = g.weight_bytes();
    // 20% of the values as float32 plus under a bit per weight for the positions.
    EXPECT_LT(double(sparse), 0.2 * double(float_bytes) * 1.15);
    for (auto& n : g.nodes()) {
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            set_codebook(n, 4, CodebookInit::kLinear, 30, 0);
        }
    }
    EXPECT_GT(double(float_bytes) / double(g.weight_bytes()), 15.0);
    const WeightStorage s = weight_storage(g.nodes()[static_cast<size_t>(g.find("fc1"))]);
    EXPECT_EQ(s.dense_bytes, 400 * 120 * 4);
    EXPECT_GT(s.position_bytes, 0);
    EXPECT_EQ(s.values.rfind("index", 0), 0u);
}

/// A .pfm's JSON header and data, and the way back with a fresh checksum (to corrupt a file
/// behind a valid CRC).
struct PfmParts {
    nlohmann::json header;
    std::string data;
    explicit PfmParts(const std::string& bytes) {
        uint64_t len = 0, raw = 0;
        std::memcpy(&len, bytes.data() + 12, 8);
        std::memcpy(&raw, bytes.data() + 20, 8);
        std::string text(raw, '\0');
        uLongf got = raw;
        uncompress(reinterpret_cast<Bytef*>(text.data()), &got,
                   reinterpret_cast<const Bytef*>(bytes.data() + 28), len - 8);
        header = nlohmann::json::parse(text);
        data = bytes.substr(20 + len, bytes.size() - 4 - 20 - len);
    }
    std::string bytes() const {
        const std::string text = header.dump();
        uLongf packed = compressBound(text.size());
        std::string h(8 + packed, '\0');
        const uint64_t raw = text.size();
        std::memcpy(h.data(), &raw, 8);
        compress2(reinterpret_cast<Bytef*>(h.data() + 8), &packed,
                  reinterpret_cast<const Bytef*>(text.data()), text.size(), 9);
        h.resize(8 + packed);
        std::string out("PFMODEL\0", 8);
        const uint32_t version = kPfmFormatVersion;
        const uint64_t hl = h.size();
        out.append(reinterpret_cast<const char*>(&version), 4);
        out.append(reinterpret_cast<const char*>(&hl), 8);
        out += h + data;
        const uint32_t crc = crc32_update(0, out.data(), out.size());
        out.append(reinterpret_cast<const char*>(&crc), 4);
        return out;
    }
};

TEST(WeightCodecTest, CorruptedCompressedFilesAreRejectedCleanly) {
    TempDir dir;
    Graph g = coded_graph(0.8, 4, 5);
    save_model(dir.file("m.pfm"), g, ModelMeta{});
    const std::string good = read_file(dir.file("m.pfm"));
    PfmParts parts(good);
    ASSERT_EQ(parts.bytes(), good);  // the test's reassembly is faithful
    auto weight_entry = [](nlohmann::json& h) -> nlohmann::json& {
        for (auto& t : h["nodes"][3]["params"]) {
            if (t["key"] == "weight") {
                return t;
            }
        }
        throw std::runtime_error("no weight");
    };
    auto expect_rejected = [&](const PfmParts& p, const std::string& needle) {
        write_file_atomic(dir.file("bad.pfm"), p.bytes());
        expect_error<InputError>([&] { load_model(dir.file("bad.pfm")); }, needle);
    };
    {
        PfmParts p = parts;
        weight_entry(p.header)["enc"]["nnz"] = 3;
        expect_rejected(p, "failed to load model");
    }
    {
        PfmParts p = parts;
        weight_entry(p.header)["enc"]["bytes"] = 1 << 30;
        expect_rejected(p, "outside the data section");
    }
    {
        PfmParts p = parts;
        weight_entry(p.header)["enc"]["positions"] = "zigzag";
        expect_rejected(p, "unknown position coding");
    }
    {
        PfmParts p = parts;
        weight_entry(p.header)["enc"]["value_bits"] = 3;
        expect_rejected(p, "failed to load model");
    }
    {
        PfmParts p = parts;  // the value stream's mode byte
        const auto& e = weight_entry(p.header)["enc"];
        const size_t at =
            e["pos_bytes"].get<size_t>() + weight_entry(p.header)["offset"].get<size_t>();
        p.data[at] = 9;
        expect_rejected(p, "unknown header");
    }
    {
        PfmParts p = parts;  // the codebook shrinks to 8 centroids
        for (auto& t : p.header["nodes"][3]["params"]) {
            if (t["key"] == "codebook") {
                t["shape"] = {8};
                t["numel"] = 8;
            }
        }
        expect_rejected(p, "failed to load model");
    }
    EXPECT_NO_THROW(load_model(dir.file("m.pfm")));
}

TEST(CodebookExportTest, GatherExportIsSmallerRunsInOnnxRuntimeAndImportsBack) {
    TempDir dir;
    Graph g = coded_graph(0.5, 4, 3);
    OnnxExportOptions plain;
    OnnxExportOptions coded;
    coded.codebook_weights = true;
    export_onnx(dir.file("decoded.onnx"), g, ModelMeta{}, plain);
    export_onnx(dir.file("codebook.onnx"), g, ModelMeta{}, coded);
    EXPECT_LT(read_file(dir.file("codebook.onnx")).size() * 2,
              read_file(dir.file("decoded.onnx")).size());
    // Importing folds Gather(codebook, Cast(indices)) back into the decoded weights.
    ModelFile f = import_onnx(dir.file("codebook.onnx"));
    for (const char* name : {"conv", "fc"}) {
        const Node& a = g.nodes()[static_cast<size_t>(g.find(name))];
        const Node& b = f.graph.nodes()[static_cast<size_t>(f.graph.find(name))];
        EXPECT_TRUE(b.params.at("weight").equal(a.params.at("weight"))) << name;
    }
    if (!ort_runner_path().empty()) {
        torch::manual_seed(4);
        at::Tensor x = torch::randn({3, 2, 6, 6});
        Model model(g.clone(), ModelMeta{});
        model.eval();
        at::NoGradGuard no_grad;
        at::Tensor want = model.forward(x);
        at::Tensor got = run_onnxruntime(dir.file("codebook.onnx"), x).output;
        EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-5));
    }
}

}  // namespace
}  // namespace pocketflow
