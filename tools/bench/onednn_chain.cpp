// SPDX-License-Identifier: Apache-2.0
// How far can two cores take batch-1 convolutions? Chains of 3x3 stride-1 convolutions (fused bias
// and ReLU, the layouts ConvCache uses) shaped like ResNet-20's stages and its 2x-pruned model's,
// each run three ways, alternated in rounds, median microseconds per chain:
//   omp      one oneDNN primitive per conv on OpenMP's two threads (what ConvCache does),
//   bands    one OpenMP region for the whole chain: each thread runs a one-thread primitive over
//            half of every conv's output rows, a barrier between convs (no fork/join per conv),
//   one      one thread,
//   half     the first thread's bands alone, the other core idle (the work per core).
// Build and run (Debian's libdnnl-dev 2.x, which tools/setup.sh installs and ConvCache uses):
//   g++ -O2 -std=c++17 -fopenmp tools/bench/onednn_chain.cpp -o /tmp/onednn_chain -ldnnl
//   /tmp/onednn_chain [rounds]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <dnnl.hpp>
#include <omp.h>

using namespace dnnl;

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

struct Conv {
    convolution_forward prim;
    memory src, weights, bias, dst;
    void run(stream& s) {
        prim.execute(s, {{DNNL_ARG_SRC, src},
                         {DNNL_ARG_WEIGHTS, weights},
                         {DNNL_ARG_BIAS, bias},
                         {DNNL_ARG_DST, dst}});
    }
};

// Output rows [r0, r1) of a 3x3 stride-1 pad-1 conv over a channels-last (or, 16 in and out,
// nChw16c: the same bytes) hw x hw image; the primitive is built for the current OpenMP threads.
Conv make_rows(engine& eng,
               stream& s,
               int ci,
               int co,
               int hw,
               int r0,
               int r1,
               float* src,
               float* dst,
               float* w,
               float* b) {
    const int start = r0 - 1, end = r1 + 1;
    const int a = std::max(0, start), e = std::min(hw, end);
    auto tag = ci == 16 && co == 16 ? memory::format_tag::nChw16c : memory::format_tag::nhwc;
    memory::desc src_md({1, ci, e - a, hw}, memory::data_type::f32, tag);
    memory::desc dst_md({1, co, r1 - r0, hw}, memory::data_type::f32, tag);
    memory::desc w_any({co, ci, 3, 3}, memory::data_type::f32, memory::format_tag::any);
    memory::desc b_md({co}, memory::data_type::f32, memory::format_tag::a);
    convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct, src_md,
                                w_any, b_md, dst_md, {1, 1}, {a - start, 1}, {end - e, 1});
    post_ops ops;
    ops.append_eltwise(1.f, algorithm::eltwise_relu, 0.f, 0.f);
    primitive_attr attr;
    attr.set_post_ops(ops);
    convolution_forward::primitive_desc pd(d, attr, eng);
    memory plain({{co, ci, 3, 3}, memory::data_type::f32, memory::format_tag::oihw}, eng, w);
    memory packed(pd.weights_desc(), eng);
    reorder(plain, packed).execute(s, plain, packed);
    s.wait();
    return Conv{convolution_forward(pd),
                memory(src_md, eng, src + static_cast<size_t>(a) * hw * ci), packed,
                memory(b_md, eng, b), memory(dst_md, eng, dst + static_cast<size_t>(r0) * hw * co)};
}

struct Layer {
    int ci, co, hw;
};

template <class F>
void time_into(std::vector<double>& out, F&& f, int runs) {
    for (int i = 0; i < runs; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        auto t1 = std::chrono::steady_clock::now();
        if (i >= runs / 10)
            out.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 6;
    engine eng(engine::kind::cpu, 0);
    stream s(eng);
    const std::vector<std::pair<std::string, std::vector<Layer>>> chains = {
        {"stage 1, both: 16-16 28x28 x6", std::vector<Layer>(6, {16, 16, 28})},
        {"base stage 2: 32-32 14x14 x5", std::vector<Layer>(5, {32, 32, 14})},
        {"base stage 3: 64-64 7x7 x5", std::vector<Layer>(5, {64, 64, 7})},
        {"2x stage 2: 16-16 14x14 x5", std::vector<Layer>(5, {16, 16, 14})},
        {"2x stage 3: 16/32 7x7 x5",
         {{16, 32, 7}, {32, 16, 7}, {16, 32, 7}, {32, 32, 7}, {32, 32, 7}}},
    };
    std::printf("%-32s %9s %9s %9s %9s  (median us per chain, %d rounds)\n", "chain", "omp",
                "bands", "one", "half", rounds);
    for (const auto& [name, layers] : chains) {
        const size_t n = layers.size();
        std::vector<std::vector<float>> act(n + 1), act2(n + 1), w(n), b(n);
        act[0].resize(static_cast<size_t>(layers[0].ci) * layers[0].hw * layers[0].hw);
        for (size_t i = 0; i < act[0].size(); ++i)
            act[0][i] = static_cast<float>(i % 7) * 0.1f - 0.3f;
        act2[0] = act[0];
        for (size_t l = 0; l < n; ++l) {
            const Layer& L = layers[l];
            act[l + 1].assign(static_cast<size_t>(L.co) * L.hw * L.hw, 0.f);
            act2[l + 1] = act[l + 1];
            w[l].resize(static_cast<size_t>(L.co) * L.ci * 9);
            for (size_t i = 0; i < w[l].size(); ++i)
                w[l][i] = static_cast<float>((i * 7 + l) % 5) * 0.01f - 0.02f;
            b[l].assign(static_cast<size_t>(L.co), 0.01f);
        }
        std::vector<Conv> whole2, whole1, top, bottom;
        omp_set_num_threads(2);
        for (size_t l = 0; l < n; ++l)
            whole2.push_back(make_rows(eng, s, layers[l].ci, layers[l].co, layers[l].hw, 0,
                                       layers[l].hw, act[l].data(), act[l + 1].data(), w[l].data(),
                                       b[l].data()));
        omp_set_num_threads(1);
        for (size_t l = 0; l < n; ++l) {
            const Layer& L = layers[l];
            const int half = (L.hw + 1) / 2;
            whole1.push_back(make_rows(eng, s, L.ci, L.co, L.hw, 0, L.hw, act[l].data(),
                                       act[l + 1].data(), w[l].data(), b[l].data()));
            top.push_back(make_rows(eng, s, L.ci, L.co, L.hw, 0, half, act2[l].data(),
                                    act2[l + 1].data(), w[l].data(), b[l].data()));
            bottom.push_back(make_rows(eng, s, L.ci, L.co, L.hw, half, L.hw, act2[l].data(),
                                       act2[l + 1].data(), w[l].data(), b[l].data()));
        }
        auto omp = [&] {
            omp_set_num_threads(2);
            for (auto& c : whole2)
                c.run(s);
        };
        auto one = [&] {
            omp_set_num_threads(1);
            for (auto& c : whole1)
                c.run(s);
        };
        auto half = [&] {
            omp_set_num_threads(1);
            for (auto& c : top)
                c.run(s);
        };
        auto bands = [&] {
            omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
            {
                stream local(eng);
                auto& mine = omp_get_thread_num() == 0 ? top : bottom;
                for (size_t l = 0; l < n; ++l) {
                    mine[l].run(local);
#pragma omp barrier
                }
            }
        };
        omp();
        bands();
        double diff = 0;
        for (size_t i = 0; i < act[n].size(); ++i)
            diff = std::max(diff, double(std::abs(act[n][i] - act2[n][i])));
        if (diff > 1e-4) {
            std::fprintf(stderr, "%s: bands differ from the whole conv by %g\n", name.c_str(),
                         diff);
            return 1;
        }
        std::vector<double> t_omp, t_bands, t_one, t_half;
        for (int r = 0; r < rounds; ++r) {
            time_into(t_omp, omp, 300);
            time_into(t_bands, bands, 300);
            time_into(t_one, one, 300);
            time_into(t_half, half, 300);
        }
        std::printf("%-32s %9.2f %9.2f %9.2f %9.2f\n", name.c_str(), median(t_omp), median(t_bands),
                    median(t_one), median(t_half));
    }
}
