// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/zoo.h"

#include <functional>
#include <map>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

/// Small helper that keeps the current tensor's channel count and names layers by prefix.
struct Builder {
    Graph g;
    int x = 0;
    int64_t c = 0;

    explicit Builder(const std::vector<int64_t>& shape) : g(shape), c(shape[0]) {}

    int conv(const std::string& name,
             int in,
             int64_t c_in,
             int64_t c_out,
             int64_t k,
             int64_t s,
             int64_t p,
             int64_t groups = 1,
             bool bias = false) {
        return g.add_conv(name, in, c_in, c_out, k, s, p, groups, bias);
    }
    /// conv → BN → activation (kReLU, kClip for ReLU6, or kIdentity for none).
    void conv_bn(const std::string& name,
                 int64_t c_out,
                 int64_t k,
                 int64_t s,
                 int64_t groups = 1,
                 Op act = Op::kReLU) {
        x = conv(name, x, c, c_out, k, s, k / 2, groups);
        x = g.add_bn(name + "_bn", x, c_out);
        if (act == Op::kReLU) {
            x = g.add_unary(name + "_relu", Op::kReLU, x);
        } else if (act == Op::kClip) {
            x = g.add_clip(name + "_relu6", x, 0.0, 6.0);
        }
        c = c_out;
    }
    void classifier(int64_t num_classes, double dropout = 0.0) {
        x = g.add_unary("avgpool", Op::kGlobalAvgPool, x);
        x = g.add_unary("flatten", Op::kFlatten, x);
        if (dropout > 0) {
            x = g.add_dropout("dropout", x, dropout);
        }
        x = g.add_linear("fc", x, c, num_classes);
    }
    /// Feature count after flattening the current value.
    int64_t flat_features() const {
        auto shapes = g.infer_shapes();
        int64_t n = 1;
        for (int64_t d : shapes[static_cast<size_t>(x)]) {
            n *= d;
        }
        return n;
    }
};

Graph lenet5(int64_t nc, const std::vector<int64_t>& shape) {
    Builder b(shape);
    b.x = b.conv("conv1", b.x, b.c, 6, 5, 1, 2, 1, true);
    b.x = b.g.add_unary("relu1", Op::kReLU, b.x);
    b.x = b.g.add_pool("pool1", Op::kMaxPool, b.x, 2, 2);
    b.x = b.conv("conv2", b.x, 6, 16, 5, 1, 0, 1, true);
    b.x = b.g.add_unary("relu2", Op::kReLU, b.x);
    b.x = b.g.add_pool("pool2", Op::kMaxPool, b.x, 2, 2);
    b.x = b.g.add_unary("flatten", Op::kFlatten, b.x);
    b.x = b.g.add_linear("fc1", b.x, b.flat_features(), 120);
    b.x = b.g.add_unary("relu3", Op::kReLU, b.x);
    b.x = b.g.add_linear("fc2", b.x, 120, 84);
    b.x = b.g.add_unary("relu4", Op::kReLU, b.x);
    b.x = b.g.add_linear("fc3", b.x, 84, nc);
    return std::move(b.g);
}

/// Adds the block's shortcut (identity, or 1×1 conv + BN projection where the shape changes) to the
/// block's output, then ReLU.
void residual_add(
    Builder& b, const std::string& name, int in, int64_t c_in, int64_t c_out, int64_t stride) {
    int shortcut = in;
    if (stride != 1 || c_in != c_out) {
        shortcut = b.conv(name + "_down", in, c_in, c_out, 1, stride, 0);
        shortcut = b.g.add_bn(name + "_down_bn", shortcut, c_out);
    }
    b.x = b.g.add_binary(name + "_add", Op::kAdd, b.x, shortcut);
    b.x = b.g.add_unary(name + "_relu", Op::kReLU, b.x);
}

/// conv-bn-relu then conv-bn, plus the shortcut.
void basic_block(Builder& b, const std::string& name, int64_t c_out, int64_t stride) {
    int in = b.x;
    int64_t c_in = b.c;
    b.conv_bn(name + "_conv1", c_out, 3, stride);
    b.conv_bn(name + "_conv2", c_out, 3, 1, 1, Op::kIdentity);
    residual_add(b, name, in, c_in, c_out, stride);
}

void bottleneck(Builder& b, const std::string& name, int64_t width, int64_t stride) {
    int in = b.x;
    int64_t c_in = b.c;
    int64_t c_out = width * 4;
    b.conv_bn(name + "_conv1", width, 1, 1);
    b.conv_bn(name + "_conv2", width, 3, stride);
    b.conv_bn(name + "_conv3", c_out, 1, 1, 1, Op::kIdentity);
    residual_add(b, name, in, c_in, c_out, stride);
}

Graph resnet_cifar(int depth, int64_t nc, const std::vector<int64_t>& shape) {
    int n = (depth - 2) / 6;
    Builder b(shape);
    b.conv_bn("conv1", 16, 3, 1);
    const int64_t widths[] = {16, 32, 64};
    for (int s = 0; s < 3; ++s) {
        for (int i = 0; i < n; ++i) {
            basic_block(b, fmt::format("layer{}_{}", s + 1, i), widths[s],
                        (i == 0 && s > 0) ? 2 : 1);
        }
    }
    b.classifier(nc);
    return std::move(b.g);
}

Graph resnet_imagenet(int depth, int64_t nc, const std::vector<int64_t>& shape) {
    std::vector<int> blocks =
        depth == 18 ? std::vector<int>{2, 2, 2, 2} : std::vector<int>{3, 4, 6, 3};
    bool use_bottleneck = depth == 50;
    Builder b(shape);
    b.x = b.conv("conv1", b.x, b.c, 64, 7, 2, 3);
    b.x = b.g.add_bn("conv1_bn", b.x, 64);
    b.x = b.g.add_unary("conv1_relu", Op::kReLU, b.x);
    b.x = b.g.add_pool("maxpool", Op::kMaxPool, b.x, 3, 2, 1);
    b.c = 64;
    const int64_t widths[] = {64, 128, 256, 512};
    for (int s = 0; s < 4; ++s) {
        for (int i = 0; i < blocks[static_cast<size_t>(s)]; ++i) {
            std::string name = fmt::format("layer{}_{}", s + 1, i);
            int64_t stride = (i == 0 && s > 0) ? 2 : 1;
            if (use_bottleneck) {
                bottleneck(b, name, widths[s], stride);
            } else {
                basic_block(b, name, widths[s], stride);
            }
        }
    }
    b.classifier(nc);
    return std::move(b.g);
}

Graph mobilenet_v1(int64_t nc, const std::vector<int64_t>& shape) {
    Builder b(shape);
    b.conv_bn("conv1", 32, 3, 2);
    const std::pair<int64_t, int64_t> cfg[] = {{64, 1},  {128, 2},  {128, 1}, {256, 2}, {256, 1},
                                               {512, 2}, {512, 1},  {512, 1}, {512, 1}, {512, 1},
                                               {512, 1}, {1024, 2}, {1024, 1}};
    int i = 0;
    for (const auto& [c_out, s] : cfg) {
        std::string name = fmt::format("block{}", ++i);
        b.conv_bn(name + "_dw", b.c, 3, s, b.c);
        b.conv_bn(name + "_pw", c_out, 1, 1);
    }
    b.classifier(nc);
    return std::move(b.g);
}

Graph mobilenet_v2(int64_t nc, const std::vector<int64_t>& shape) {
    Builder b(shape);
    b.conv_bn("conv1", 32, 3, 2, 1, Op::kClip);
    struct Setting {
        int64_t t, c, n, s;
    };
    const Setting settings[] = {{1, 16, 1, 1}, {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
    int block = 0;
    for (const auto& st : settings) {
        for (int64_t i = 0; i < st.n; ++i) {
            std::string name = fmt::format("block{}", ++block);
            int in = b.x;
            int64_t c_in = b.c;
            int64_t stride = i == 0 ? st.s : 1;
            if (st.t != 1) {
                b.conv_bn(name + "_expand", c_in * st.t, 1, 1, 1, Op::kClip);
            }
            b.conv_bn(name + "_dw", b.c, 3, stride, b.c, Op::kClip);
            b.conv_bn(name + "_project", st.c, 1, 1, 1, Op::kIdentity);
            if (stride == 1 && c_in == st.c) {
                b.x = b.g.add_binary(name + "_add", Op::kAdd, b.x, in);
            }
        }
    }
    b.conv_bn("conv_last", 1280, 1, 1, 1, Op::kClip);
    b.classifier(nc, 0.2);
    return std::move(b.g);
}

Graph vgg16(int64_t nc, const std::vector<int64_t>& shape) {
    Builder b(shape);
    const int64_t cfg[] = {64, 64,  0,   128, 128, 0,   256, 256, 256,
                           0,  512, 512, 512, 0,   512, 512, 512, 0};
    int conv = 0, pool = 0;
    for (int64_t v : cfg) {
        if (v == 0) {
            b.x = b.g.add_pool(fmt::format("pool{}", ++pool), Op::kMaxPool, b.x, 2, 2);
            continue;
        }
        std::string name = fmt::format("conv{}", ++conv);
        b.x = b.conv(name, b.x, b.c, v, 3, 1, 1, 1, true);
        b.x = b.g.add_unary(name + "_relu", Op::kReLU, b.x);
        b.c = v;
    }
    b.x = b.g.add_unary("flatten", Op::kFlatten, b.x);
    b.x = b.g.add_linear("fc1", b.x, b.flat_features(), 4096);
    b.x = b.g.add_unary("fc1_relu", Op::kReLU, b.x);
    b.x = b.g.add_dropout("fc1_dropout", b.x, 0.5);
    b.x = b.g.add_linear("fc2", b.x, 4096, 4096);
    b.x = b.g.add_unary("fc2_relu", Op::kReLU, b.x);
    b.x = b.g.add_dropout("fc2_dropout", b.x, 0.5);
    b.x = b.g.add_linear("fc3", b.x, 4096, nc);
    return std::move(b.g);
}

using ZooFn = std::function<Graph(int64_t, const std::vector<int64_t>&)>;

const std::map<std::string, ZooFn>& zoo() {
    static const std::map<std::string, ZooFn> table = {
        {"lenet5", lenet5},
        {"resnet20", [](int64_t nc, const auto& s) { return resnet_cifar(20, nc, s); }},
        {"resnet32", [](int64_t nc, const auto& s) { return resnet_cifar(32, nc, s); }},
        {"resnet44", [](int64_t nc, const auto& s) { return resnet_cifar(44, nc, s); }},
        {"resnet56", [](int64_t nc, const auto& s) { return resnet_cifar(56, nc, s); }},
        {"resnet18", [](int64_t nc, const auto& s) { return resnet_imagenet(18, nc, s); }},
        {"resnet34", [](int64_t nc, const auto& s) { return resnet_imagenet(34, nc, s); }},
        {"resnet50", [](int64_t nc, const auto& s) { return resnet_imagenet(50, nc, s); }},
        {"mobilenet_v1", mobilenet_v1},
        {"mobilenet_v2", mobilenet_v2},
        {"vgg16", vgg16},
    };
    return table;
}

}  // namespace

std::vector<std::string> zoo_names() {
    std::vector<std::string> names;
    for (const auto& [name, fn] : zoo()) {
        names.push_back(name);
    }
    return names;
}

Graph build_zoo_model(const std::string& arch,
                      int64_t num_classes,
                      const std::vector<int64_t>& input_shape,
                      uint64_t seed) {
    auto it = zoo().find(arch);
    if (it == zoo().end()) {
        std::string hint = nearest_match(arch, zoo_names());
        throw ConfigError(
            fmt::format("unknown architecture '{}'{}; available: {}", arch,
                        hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint),
                        join(zoo_names(), ", ")));
    }
    PF_CHECK(num_classes >= 1, ConfigError, "failed to build {} with {} classes: must be >= 1",
             arch, num_classes);
    PF_CHECK(input_shape.size() == 3 && input_shape[0] >= 1 && input_shape[1] >= 1 &&
                 input_shape[2] >= 1,
             ConfigError, "failed to build {}: input shape must be [C, H, W] with positive sizes",
             arch);
    try {
        Graph g = it->second(num_classes, input_shape);
        g.validate();
        init_weights(g, seed);
        return g;
    } catch (const InputError& e) {
        throw ConfigError(fmt::format("failed to build {} for input [{}]: {}", arch,
                                      fmt::join(input_shape, ", "), e.what()));
    }
}

}  // namespace pocketflow
