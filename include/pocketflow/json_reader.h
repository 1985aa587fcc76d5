// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/error.h"

namespace pocketflow {

/// `value` as JSON text (`indent` as nlohmann's dump: -1 for one line). Strings that are not valid
/// UTF-8 (a path, a name from an ONNX file's metadata) have their invalid bytes written as U+FFFD
/// instead of throwing the library's type_error after the work is done.
std::string json_text(const nlohmann::json& value, int indent = -1);

/// Typed, checked access to a JSON document read from a file (a .pfm header, a summary): every
/// failure is an InputError "<what>: <field path>: expected <type>, got <what it is>", never the
/// JSON library's own text.
///
/// Example:
///   JsonReader header(json, "failed to load model m.pfm: header");
///   auto shape = header.at("nodes").at(3).at("inputs").get<std::vector<int>>();
///   // -> "failed to load model m.pfm: header: nodes[3].inputs: expected a list of integers,
///   //     got a string"
class JsonReader {
public:
    JsonReader(const nlohmann::json& value, std::string context, std::string path = "")
        : value_(&value), context_(std::move(context)), path_(std::move(path)) {}

    /// A required member of an object.
    JsonReader at(const std::string& key) const;
    /// An element of an array.
    JsonReader at(size_t index) const;
    bool has(const std::string& key) const { return value_->is_object() && value_->contains(key); }
    /// Elements of an array (InputError when not an array).
    size_t size() const;
    const nlohmann::json& raw() const { return *value_; }
    const std::string& path() const { return path_; }

    /// The value as T: std::string, bool, int, int64_t, uint64_t, double, or a vector of int,
    /// int64_t or double. Integers must be integral and in T's range.
    template <typename T>
    T get() const;

    /// An InputError naming this field.
    InputError fail(const std::string& why) const;

private:
    const nlohmann::json* value_;
    std::string context_;
    std::string path_;
};

template <>
std::string JsonReader::get<std::string>() const;
template <>
bool JsonReader::get<bool>() const;
template <>
int JsonReader::get<int>() const;
template <>
int64_t JsonReader::get<int64_t>() const;
template <>
uint64_t JsonReader::get<uint64_t>() const;
template <>
double JsonReader::get<double>() const;
template <>
std::vector<int> JsonReader::get<std::vector<int>>() const;
template <>
std::vector<int64_t> JsonReader::get<std::vector<int64_t>>() const;
template <>
std::vector<double> JsonReader::get<std::vector<double>>() const;

/// A JSON library exception as a message for users: its "[json.exception.*]" prefix dropped.
std::string json_error_text(const nlohmann::json::exception& e);

/// Parses JSON text; InputError "<context>: not valid JSON (<where>)" otherwise.
nlohmann::json parse_json_text(const std::string& text, const std::string& context);

}  // namespace pocketflow
