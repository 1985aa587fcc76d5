// SPDX-License-Identifier: Apache-2.0
// Hostile input, one class of failure at a time (docs/failure-modes.md is the catalogue): every
// case is a clear error naming the file, the field and the value, of the project's own types
// (exit 2 at the command line), raised before any large allocation.
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <png.h>
#include <zlib.h>

#include "pocketflow/config.h"
#include "pocketflow/data.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_error;
using testing::TempDir;

// ---- .pfm: a header rewritten behind a valid checksum ---------------------------------------

struct PfmParts {
    std::string magic_and_version, header_json, data;
};

PfmParts split_pfm(const std::string& bytes) {
    PfmParts p;
    p.magic_and_version = bytes.substr(0, 12);
    uint64_t header_len = 0, raw_len = 0;
    std::memcpy(&header_len, bytes.data() + 12, 8);
    std::memcpy(&raw_len, bytes.data() + 20, 8);
    p.header_json.resize(raw_len);
    uLongf got = raw_len;
    EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(p.header_json.data()), &got,
                         reinterpret_cast<const Bytef*>(bytes.data() + 28), header_len - 8),
              Z_OK);
    p.data = bytes.substr(20 + header_len, bytes.size() - 4 - (20 + header_len));
    return p;
}

std::string join_pfm(const PfmParts& p, const std::string& header_json) {
    uLongf packed = compressBound(header_json.size());
    std::string z(packed, '\0');
    compress2(reinterpret_cast<Bytef*>(z.data()), &packed,
              reinterpret_cast<const Bytef*>(header_json.data()), header_json.size(), 9);
    z.resize(packed);
    const uint64_t raw_len = header_json.size(), header_len = 8 + z.size();
    std::string out = p.magic_and_version;
    out.append(reinterpret_cast<const char*>(&header_len), 8);
    out.append(reinterpret_cast<const char*>(&raw_len), 8);
    out += z + p.data;
    const uint32_t crc = crc32_update(0, out.data(), out.size());
    out.append(reinterpret_cast<const char*>(&crc), 4);
    return out;
}

TEST(HostileInputTest, PfmHeadersAreCheckedFieldByField) {
    TempDir dir;
    save_model(dir.file("m.pfm"), build_zoo_model("lenet5", 10, {1, 28, 28}),
               ModelMeta{"lenet5", "fashion_mnist", {0.5}, {0.25}});
    const PfmParts parts = split_pfm(read_file(dir.file("m.pfm")));
    const json header = json::parse(parts.header_json);
    auto load_with = [&](const std::string& text) {
        write_file_atomic(dir.file("h.pfm"), join_pfm(parts, text));
        load_model(dir.file("h.pfm"));
    };
    try {
        load_with(header.dump());  // the rewriting itself is faithful
    } catch (const Error& e) {
        ADD_FAILURE() << e.what();
    }
    auto edited = [&](const std::function<void(json&)>& edit) {
        json h = header;
        edit(h);
        return h.dump();
    };
    const std::vector<std::pair<std::string, std::string>> cases = {
        {parts.header_json.substr(0, parts.header_json.size() / 2), "header: not valid JSON"},
        {"[1, 2]", "header: expected an object with \"meta\", got a list"},
        {"\"text\"", "got a string"},
        {edited([](json& h) { h.erase("nodes"); }), "header: nodes: missing"},
        {edited([](json& h) { h.erase("meta"); }), "header: meta: missing"},
        {edited([](json& h) { h.erase("output"); }), "header: output: missing"},
        {edited([](json& h) { h["nodes"] = json::object(); }), "header: nodes: expected a list"},
        {edited([](json& h) { h["nodes"][1]["inputs"] = "x"; }),
         "header: nodes[1].inputs: expected a list of integers, got a string"},
        {edited([](json& h) { h["nodes"][1]["inputs"] = {1.5}; }),
         "nodes[1].inputs[0]: expected an integer, got the number 1.5"},
        {edited([](json& h) { h["nodes"][1]["op"] = "Frobnicate"; }),
         "nodes[1].op: unknown operator \"Frobnicate\""},
        {edited([](json& h) { h["nodes"][1]["attrs"]["stride"] = "2"; }),
         "nodes[1].attrs.stride: expected a list of integers"},
        {edited([](json& h) { h["nodes"][1]["params"][0]["offset"] = -5; }),
         "nodes[1].params[0].offset: -5 is out of range"},
        {edited([](json& h) { h["meta"]["mean"] = {"a"}; }),
         "meta.mean[0]: expected a number, got a string"},
        {edited([](json& h) { h["meta"]["std"] = {0.0}; }),
         "meta: std[0] is 0: a standard deviation must be above 0"},
        {edited([](json& h) { h["meta"]["std"] = {-1.0}; }), "std[0] is -1"},
        {edited([](json& h) {
             h["meta"]["mean"] = {0.1, 0.2};
             h["meta"]["std"] = {0.1, 0.2};
         }),
         "mean and std have 2 values for an input of 1 channels"},
        {edited([](json& h) {
             h["input_shape"] = {1, 28};
         }),
         "input_shape: expected [C, H, W]"},
        {edited([](json& h) { h["output"] = 1e12; }), "output: expected an integer"},
    };
    for (const auto& [text, message] : cases) {
        SCOPED_TRACE(message);
        expect_error<InputError>([&] { load_with(text); }, message);
        try {
            load_with(text);
        } catch (const InputError& e) {
            EXPECT_EQ(std::string(e.what()).find("json.exception"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("h.pfm"), std::string::npos) << e.what();
        }
    }
}

TEST(HostileInputTest, JsonReaderNamesPathsAndTypes) {
    const json j = json::parse(R"({"a": {"b": [1, -2, 3.5]}, "big": 1e30, "s": "x"})");
    JsonReader r(j, "ctx");
    EXPECT_EQ(r.at("a").at("b").at(0).get<int>(), 1);
    expect_error<InputError>([&] { r.at("a").at("b").at(2).get<int>(); },
                             "ctx: a.b[2]: expected an integer, got the number 3.5");
    expect_error<InputError>([&] { r.at("a").at("b").at(1).get<uint64_t>(); },
                             "ctx: a.b[1]: -2 is out of range");
    expect_error<InputError>([&] { r.at("a").at("b").at(7); }, "a.b: has 3 elements, no [7]");
    expect_error<InputError>([&] { r.at("s").get<double>(); },
                             "s: expected a number, got a string");
    expect_error<InputError>([&] { r.at("big").get<int64_t>(); }, "big: expected an integer");
    expect_error<InputError>([&] { r.at("nope"); }, "ctx: nope: missing");
    expect_error<InputError>([&] { parse_json_text("{\"a\": ", "f.json"); },
                             "f.json: not valid JSON (parse error");
}

// ---- job files --------------------------------------------------------------------------------

TEST(HostileInputTest, JobFilesAreOneWellFormedDocument) {
    const std::string model = "model: {arch: lenet5}\ndata: {dataset: synthetic}\n";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"seed: 1\nseed: 2\n" + model, "j.yaml:2:1: duplicate key seed"},
        {model + "train: {epochs: 1, epochs: 2}\n", "j.yaml:3:20: duplicate key train.epochs"},
        {model + "---\nseed: 2\n", "j.yaml:3: a job file holds one YAML document"},
        {",", "j.yaml:1:1: failed to parse YAML: no document can start here"},  // (fuzz: a hang)
        {"a: &x [*x]\n" + model, "j.yaml:1:8: YAML aliases (*name) are not supported"},  // a cycle
        {"a: &x [1, 2]\nb: [*x, *x]\n" + model, "YAML aliases (*name) are not supported"},
        {model + "...\njunk\n", "j.yaml:4: a job file holds one YAML document"},
        {"name: \"a\xff\xfe\"\n" + model, "j.yaml:1:7: name: the value is not valid UTF-8"},
        {"name: \"\xed\xa0\x80\"\n" + model, "name: the value is not valid UTF-8"},  // surrogate
        {"name: \"\xc0\xaf\"\n" + model, "name: the value is not valid UTF-8"},      // overlong
        {model + "pipeline: [{learner: [a, b]}]\n", "pipeline[0].learner: expected a learner's"},
        {model + "pipeline: [{learner: full_precision, epochs: &a [1, [2, 3]]}]\n",
         "pipeline[0].epochs"},
        {"name: " + std::string(300, 'n') + "\n" + model, "is 300 characters long; at most 128"},
        {"output_dir: " + std::string(5000, 'o') + "\n" + model,
         "is 5000 characters long; at most 1024"},
    };
    for (const auto& [text, message] : cases) {
        SCOPED_TRACE(message);
        expect_error<ConfigError>(
            [&] {
                Job job = parse_job(text, "j.yaml", {});
                for (const auto& stage : job.pipeline) {
                    builtin_registry().get(stage.learner).create(stage, job);
                }
            },
            message);
    }
    // Valid multi-byte text passes.
    EXPECT_NO_THROW(
        parse_job("name: \"r\xc3\xa9sum\xc3\xa9-\xe2\x82\xac\"\n" + model, "j.yaml", {}));
    // A long unknown key (found by fuzzing: 5000 characters of message) is shortened too.
    try {
        parse_job(std::string(3000, 'k') + ": 1\n" + model, "j.yaml", {});
        ADD_FAILURE() << "a 3000-character key was accepted";
    } catch (const ConfigError& e) {
        EXPECT_LT(std::string(e.what()).size(), 600u) << std::string(e.what()).substr(0, 600);
    }
    // A long value is shortened in the message, not repeated.
    try {
        parse_job("seed: " + std::string(100000, '9') + "\n" + model, "j.yaml", {});
        ADD_FAILURE() << "a 100000-digit seed was accepted";
    } catch (const ConfigError& e) {
        EXPECT_LT(std::string(e.what()).size(), 400u) << std::string(e.what()).substr(0, 400);
    }
}

// ---- data -------------------------------------------------------------------------------------

void put_be32(std::string& s, uint32_t v) {
    for (int k = 3; k >= 0; --k) {
        s += static_cast<char>((v >> (8 * k)) & 0xff);
    }
}

TEST(HostileInputTest, DataHeadersAreCheckedBeforeAllocating) {
    TempDir dir;
    std::string images, labels;
    put_be32(images, 0x803);
    put_be32(images, 1000000000);  // a billion images of 65536x65536 in a 16-byte file
    put_be32(images, 65536);
    put_be32(images, 65536);
    put_be32(labels, 0x801);
    put_be32(labels, 1000000000);
    write_file_atomic(dir.file("img"), images);
    write_file_atomic(dir.file("lab"), labels);
    expect_error<InputError>([&] { load_idx(dir.file("img"), dir.file("lab")); },
                             "declares 1000000000 images of 65536x65536 but the file has 16 bytes");
    // An image folder whose PNG declares 100000x100000 pixels in a few hundred bytes.
    {
        const std::string path = dir.file("folder/a/x.png");
        testing::write_png(path, 4, 4);
        std::string bytes = read_file(path);
        // IHDR width and height (big-endian at offsets 16 and 20), its CRC recomputed.
        std::string dims;
        put_be32(dims, 100000);
        put_be32(dims, 100000);
        bytes.replace(16, 8, dims);
        const uint32_t crc = crc32(0, reinterpret_cast<const Bytef*>(bytes.data() + 12), 17);
        std::string crc_be;
        put_be32(crc_be, crc);
        bytes.replace(29, 4, crc_be);
        write_file_atomic(path, bytes);
    }
    auto folder = load_image_folder(dir.file("folder"), 32);
    expect_error<InputError>([&] { folder->get(0); },
                             "x.png: it declares 100000x100000 pixels; sides of 1 to 16384");
}

TEST(HostileInputTest, SplitsMustAgreeOnTheirClasses) {
    TempDir dir;
    for (const char* f : {"train/cat/1.png", "train/dog/1.png", "val/cat/1.png", "val/eel/1.png"}) {
        testing::write_png(dir.path() / f, 8, 8);
    }
    DataConfig cfg;
    cfg.dataset = "imagefolder";
    cfg.root = dir.path().string();
    cfg.resize = 8;
    cfg.image_size = 8;
    expect_error<InputError>([&] { load_data(cfg, 1); },
                             "the class folders of val differ from train/ (1 only in train/: "
                             "dog; 1 only in val: eel)");
    // IDX test labels beyond the training set's classes.
    std::string images, labels, test_labels;
    put_be32(images, 0x803);
    put_be32(images, 2);
    put_be32(images, 2);
    put_be32(images, 2);
    images += std::string(8, '\0');
    put_be32(labels, 0x801);
    put_be32(labels, 2);
    labels += std::string("\x01\x02", 2);
    test_labels = labels.substr(0, 8) + std::string("\x01\xc8", 2);  // label 200
    fs::create_directories(dir.path() / "idx");
    write_file_atomic(dir.file("idx/train-images-idx3-ubyte"), images);
    write_file_atomic(dir.file("idx/train-labels-idx1-ubyte"), labels);
    write_file_atomic(dir.file("idx/t10k-images-idx3-ubyte"), images);
    write_file_atomic(dir.file("idx/t10k-labels-idx1-ubyte"), test_labels);
    DataConfig idx;
    idx.dataset = "mnist";
    idx.root = dir.file("idx");
    expect_error<InputError>([&] { load_data(idx, 1); },
                             "the test set has labels up to 200 but the training set has 10 "
                             "classes");
}

}  // namespace
}  // namespace pocketflow
