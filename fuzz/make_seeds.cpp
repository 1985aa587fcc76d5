// SPDX-License-Identifier: Apache-2.0
// Writes the seed corpora of the fuzz targets into DIR/<target>/: small valid inputs of every
// kind each parser reads — .pfm models (float, sparse, codebook, int8), ONNX exports, PNG and
// JPEG images, IDX and CIFAR files — made with the project's own writers. Job files and the ONNX
// test fixtures are copied by tools/fuzz.sh.
//   make_seeds DIR
#include <filesystem>
#include <iostream>

#include <ATen/ATen.h>
#include <png.h>
#include <turbojpeg.h>

#include "pocketflow/codebook.h"
#include "pocketflow/graph.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace fs = std::filesystem;
using namespace pocketflow;

namespace {

/// A tiny CNN: conv (BN, ReLU) -> max pool -> conv -> global pool -> flatten -> linear.
Graph tiny_net() {
    at::manual_seed(1);
    Graph g({1, 8, 8});
    int x = g.add_conv("conv1", g.input(), 1, 4, 3, 1, 1);
    x = g.add_bn("bn1", x, 4);
    x = g.add_unary("relu1", Op::kReLU, x);
    x = g.add_pool("pool1", Op::kMaxPool, x, 2, 2);
    x = g.add_conv("conv2", x, 4, 4, 3, 1, 1, 1, true);
    x = g.add_unary("gap", Op::kGlobalAvgPool, x);
    x = g.add_unary("flatten", Op::kFlatten, x);
    g.add_linear("fc", x, 4, 3);
    for (auto& n : g.nodes()) {
        for (auto& [k, t] : n.params) {
            t.normal_(0, 0.5);
        }
    }
    return g;
}

void put_be32(std::string& s, uint32_t v) {
    for (int k = 3; k >= 0; --k) {
        s += static_cast<char>((v >> (8 * k)) & 0xff);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: make_seeds DIR\n";
        return 2;
    }
    const fs::path dir = argv[1];
    for (const char* t : {"pfm", "onnx", "image", "idx_cifar"}) {
        fs::create_directories(dir / t);
    }
    const ModelMeta meta{"custom", "synthetic", {0.5}, {0.25}};
    Graph g = tiny_net();
    save_model((dir / "pfm" / "float.pfm").string(), g, meta);
    export_onnx((dir / "onnx" / "tiny.onnx").string(), g, meta);
    Graph sparse = g.clone();
    for (auto& n : sparse.nodes()) {
        if (n.op == Op::kConv2d) {
            set_magnitude_mask(n, 0.6);
        }
    }
    save_model((dir / "pfm" / "sparse.pfm").string(), sparse, meta);
    Graph coded = sparse.clone();
    for (auto& n : coded.nodes()) {
        if (n.name == "conv2") {
            set_codebook(n, 2, CodebookInit::kLinear, 3, 1);
        }
    }
    save_model((dir / "pfm" / "codebook.pfm").string(), coded, meta);
    OnnxExportOptions codebook_export;
    codebook_export.codebook_weights = true;
    export_onnx((dir / "onnx" / "codebook.onnx").string(), coded, meta, codebook_export);
    Graph q = fold_batch_norm(g);
    QuantizeOptions qo;
    qo.layers = {{"conv1", {8, 8}}, {"conv2", {4, 8}}, {"fc", {8, 8}}};
    prepare_quantization(q, qo);
    save_model((dir / "pfm" / "int8.pfm").string(), q, meta);
    // Images: a 6x5 PNG and JPEG.
    std::vector<uint8_t> rgb(6 * 5 * 3);
    for (size_t i = 0; i < rgb.size(); ++i) {
        rgb[i] = static_cast<uint8_t>(i * 37);
    }
    {
        png_image image{};
        image.version = PNG_IMAGE_VERSION;
        image.width = 6;
        image.height = 5;
        image.format = PNG_FORMAT_RGB;
        png_alloc_size_t size = 0;
        png_image_write_to_memory(&image, nullptr, &size, 0, rgb.data(), 0, nullptr);
        std::string bytes(size, '\0');
        png_image_write_to_memory(&image, bytes.data(), &size, 0, rgb.data(), 0, nullptr);
        write_file_atomic(dir / "image" / "png", "\x01" + bytes.substr(0, size));
    }
    {
        tjhandle tj = tjInitCompress();
        unsigned char* jpeg = nullptr;
        unsigned long size = 0;
        tjCompress2(tj, rgb.data(), 6, 0, 5, TJPF_RGB, &jpeg, &size, TJSAMP_420, 80, 0);
        write_file_atomic(dir / "image" / "jpeg",
                          "\x02" + std::string(reinterpret_cast<char*>(jpeg), size));
        tjFree(jpeg);
        tjDestroy(tj);
    }
    // IDX: 3 images of 2x2 and their labels, split after the images (mode byte 0).
    std::string images, labels;
    put_be32(images, 0x803);
    put_be32(images, 3);
    put_be32(images, 2);
    put_be32(images, 2);
    images += std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12);
    put_be32(labels, 0x801);
    put_be32(labels, 3);
    labels += std::string("\x01\x02\x03", 3);
    const size_t cut = images.size();
    write_file_atomic(dir / "idx_cifar" / "idx", std::string(1, '\0') +
                                                     static_cast<char>(cut & 0xff) +
                                                     static_cast<char>(cut >> 8) + images + labels);
    // CIFAR-10 (mode 1) and CIFAR-100 (mode 2): two records each.
    std::string c10, c100;
    for (int r = 0; r < 2; ++r) {
        c10 += static_cast<char>(r + 3) + std::string(3072, static_cast<char>(r * 40));
        c100 += std::string(1, static_cast<char>(r)) + static_cast<char>(r + 50) +
                std::string(3072, static_cast<char>(r * 60));
    }
    write_file_atomic(dir / "idx_cifar" / "cifar10", std::string("\x01\x00\x00", 3) + c10);
    write_file_atomic(dir / "idx_cifar" / "cifar100", std::string("\x02\x00\x00", 3) + c100);
    std::cout << "seeds written to " << dir.string() << "\n";
    return 0;
}
