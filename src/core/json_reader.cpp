// SPDX-License-Identifier: Apache-2.0
// Checked access to JSON read from files: errors name the file and the field.
#include "pocketflow/json_reader.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace pocketflow {

using nlohmann::json;

std::string json_text(const json& value, int indent) {
    return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

namespace {

std::string kind_of(const json& j) {
    switch (j.type()) {
        case json::value_t::null:
            return "null";
        case json::value_t::object:
            return "an object";
        case json::value_t::array:
            return "a list";
        case json::value_t::string:
            return "a string";
        case json::value_t::boolean:
            return "a boolean";
        case json::value_t::number_float:
            return fmt::format("the number {}", j.get<double>());
        case json::value_t::number_integer:
        case json::value_t::number_unsigned:
            return fmt::format("the integer {}", j.dump());
        default:
            return "an unsupported value";
    }
}

template <typename T>
T integer(const JsonReader& r) {
    const json& j = r.raw();
    if (j.is_number_integer()) {
        if (j.is_number_unsigned()) {
            const auto v = j.get<uint64_t>();
            if (v <= static_cast<uint64_t>(std::numeric_limits<T>::max())) {
                return static_cast<T>(v);
            }
        } else {
            const auto v = j.get<int64_t>();
            if (v >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                (v < 0 || static_cast<uint64_t>(v) <=
                              static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
                return static_cast<T>(v);
            }
        }
        throw r.fail(fmt::format("{} is out of range", j.dump()));
    }
    throw r.fail("expected an integer, got " + kind_of(j));
}

template <typename T>
std::vector<T> list(const JsonReader& r, const char* what) {
    if (!r.raw().is_array()) {
        throw r.fail(fmt::format("expected a list of {}, got {}", what, kind_of(r.raw())));
    }
    std::vector<T> out;
    out.reserve(r.raw().size());
    for (size_t i = 0; i < r.raw().size(); ++i) {
        out.push_back(r.at(i).get<T>());
    }
    return out;
}

}  // namespace

InputError JsonReader::fail(const std::string& why) const {
    return InputError(
        fmt::format("{}: {}{}", context_, path_.empty() ? std::string() : path_ + ": ", why));
}

JsonReader JsonReader::at(const std::string& key) const {
    if (!value_->is_object()) {
        throw fail(fmt::format("expected an object with \"{}\", got {}", key, kind_of(*value_)));
    }
    const auto it = value_->find(key);
    const std::string where = path_.empty() ? key : path_ + "." + key;
    if (it == value_->end()) {
        throw JsonReader(*value_, context_, where).fail("missing");
    }
    return JsonReader(*it, context_, where);
}

JsonReader JsonReader::at(size_t index) const {
    if (!value_->is_array()) {
        throw fail("expected a list, got " + kind_of(*value_));
    }
    if (index >= value_->size()) {
        throw fail(fmt::format("has {} elements, no [{}]", value_->size(), index));
    }
    return JsonReader((*value_)[index], context_, fmt::format("{}[{}]", path_, index));
}

size_t JsonReader::size() const {
    if (!value_->is_array()) {
        throw fail("expected a list, got " + kind_of(*value_));
    }
    return value_->size();
}

template <>
std::string JsonReader::get<std::string>() const {
    if (!value_->is_string()) {
        throw fail("expected a string, got " + kind_of(*value_));
    }
    return value_->get<std::string>();
}

template <>
bool JsonReader::get<bool>() const {
    if (!value_->is_boolean()) {
        throw fail("expected true or false, got " + kind_of(*value_));
    }
    return value_->get<bool>();
}

template <>
int JsonReader::get<int>() const {
    return integer<int>(*this);
}

template <>
int64_t JsonReader::get<int64_t>() const {
    return integer<int64_t>(*this);
}

template <>
uint64_t JsonReader::get<uint64_t>() const {
    return integer<uint64_t>(*this);
}

template <>
double JsonReader::get<double>() const {
    if (!value_->is_number()) {
        throw fail("expected a number, got " + kind_of(*value_));
    }
    return value_->get<double>();
}

template <>
std::vector<int> JsonReader::get<std::vector<int>>() const {
    return list<int>(*this, "integers");
}

template <>
std::vector<int64_t> JsonReader::get<std::vector<int64_t>>() const {
    return list<int64_t>(*this, "integers");
}

template <>
std::vector<double> JsonReader::get<std::vector<double>>() const {
    return list<double>(*this, "numbers");
}

std::string json_error_text(const json::exception& e) {
    std::string text = e.what();
    if (text.rfind("[json.exception.", 0) == 0) {
        const auto close = text.find("] ");
        if (close != std::string::npos) {
            text = text.substr(close + 2);
        }
    }
    return text;
}

json parse_json_text(const std::string& text, const std::string& context) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        throw InputError(fmt::format("{}: not valid JSON ({})", context, json_error_text(e)));
    }
}

}  // namespace pocketflow
