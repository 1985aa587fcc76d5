// SPDX-License-Identifier: Apache-2.0
// ConfigReader: typed reads of one YAML mapping with key paths, lines and unknown-key checks.
// The job's schema (which keys, defaults, checks) is read with it in config.cpp.
#include <algorithm>
#include <cmath>
#include <set>

#include "pocketflow/config.h"
#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow {

ConfigReader::ConfigReader(const YAML::Node& node, std::string path, const Source& source)
    : node_(node), path_(std::move(path)), source_(source) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) {
        fail("", "expected a mapping of keys to values");
    }
    resolved_ = YAML::Node(YAML::NodeType::Map);
}

std::string ConfigReader::key_path(const std::string& key) const {
    if (key.empty()) {
        return path_.empty() ? "<top level>" : path_;
    }
    return path_.empty() ? key : path_ + "." + key;
}

const YAML::Node* ConfigReader::find(const std::string& key) const {
    if (!node_ || !node_.IsMap()) {
        return nullptr;
    }
    for (auto it = node_.begin(); it != node_.end(); ++it) {
        if (it->first.Scalar() == key) {
            found_.reset(it->second);
            return &found_;
        }
    }
    return nullptr;
}

bool ConfigReader::has(const std::string& key) const {
    return find(key) != nullptr;
}

std::string ConfigReader::location(const std::string& key) const {
    std::string kp = key_path(key);
    if (source_.overridden.count(kp) != 0) {
        return "--set " + kp;
    }
    YAML::Mark mark = node_ ? node_.Mark() : YAML::Mark::null_mark();
    if (const YAML::Node* n = find(key)) {
        mark = n->Mark();
    }
    if (mark.is_null()) {
        return source_.file;
    }
    return fmt::format("{}:{}:{}", source_.file, mark.line + 1, mark.column + 1);
}

std::string ConfigReader::location_of(const YAML::Node& node) const {
    const YAML::Mark mark = node.Mark();
    if (mark.is_null()) {
        return source_.file;
    }
    return fmt::format("{}:{}:{}", source_.file, mark.line + 1, mark.column + 1);
}

void ConfigReader::fail(const std::string& key, const std::string& message) const {
    std::string value;
    if (const YAML::Node* n = find(key)) {
        if (n->IsScalar()) {
            value = " with '" + shorten(n->Scalar(), 80) + "'";
        }
    }
    throw ConfigError(
        fmt::format("{}: failed to read {}{}: {}", location(key), key_path(key), value, message));
}

// `doc` documents the key at every call site (the schema in the code); it is not stored.
YAML::Node ConfigReader::value_node(const std::string& key, const std::string& /*doc*/) {
    known_.push_back(key);
    const YAML::Node* n = find(key);
    if (n == nullptr || n->IsNull()) {
        return YAML::Node();
    }
    return *n;
}

namespace {
/// True when a key is given with a non-null value (absent and `key: ~` both mean "use the
/// default").
bool present(const YAML::Node& n) {
    return n.IsDefined() && !n.IsNull();
}

bool as_double(const YAML::Node& n, double& out) {
    if (!n.IsScalar()) {
        return false;
    }
    try {
        out = n.as<double>();
    } catch (const YAML::Exception&) {
        return false;
    }
    return std::isfinite(out);
}
}  // namespace

void ConfigReader::read(const std::string& key,
                        std::string& out,
                        const std::string& doc,
                        const std::vector<std::string>& choices) {
    YAML::Node n = value_node(key, doc);
    if (present(n)) {
        if (!n.IsScalar()) {
            fail(key, "expected a string");
        }
        out = n.Scalar();
    }
    if (!choices.empty() && std::find(choices.begin(), choices.end(), out) == choices.end()) {
        std::string hint = nearest_match(out, choices);
        fail(key, fmt::format("must be one of: {}{}", join(choices, ", "),
                              hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint)));
    }
    resolved_[key] = out;
}

void ConfigReader::read(const std::string& key, bool& out, const std::string& doc) {
    YAML::Node n = value_node(key, doc);
    if (present(n)) {
        try {
            if (!n.IsScalar()) {
                throw YAML::Exception(YAML::Mark::null_mark(), "");
            }
            out = n.as<bool>();
        } catch (const YAML::Exception&) {
            fail(key, "expected true or false");
        }
    }
    resolved_[key] = out;
}

void ConfigReader::read(const std::string& key,
                        int64_t& out,
                        const std::string& doc,
                        const Check& check) {
    YAML::Node n = value_node(key, doc);
    if (present(n)) {
        double v = 0;
        if (!as_double(n, v) || v != std::floor(v) || std::abs(v) > 9e15) {
            fail(key, "expected an integer");
        }
        out = static_cast<int64_t>(v);
    }
    if (check) {
        std::string rule = check(static_cast<double>(out));
        if (!rule.empty()) {
            fail(key, rule);
        }
    }
    resolved_[key] = out;
}

void ConfigReader::read(const std::string& key,
                        int& out,
                        const std::string& doc,
                        const Check& check) {
    int64_t v = out;
    read(key, v, doc, check);
    out = static_cast<int>(v);
}

void ConfigReader::read(const std::string& key, uint64_t& out, const std::string& doc) {
    int64_t v = static_cast<int64_t>(out);
    read(key, v, doc, at_least(0));
    out = static_cast<uint64_t>(v);
}

void ConfigReader::read(const std::string& key,
                        double& out,
                        const std::string& doc,
                        const Check& check) {
    YAML::Node n = value_node(key, doc);
    if (present(n) && !as_double(n, out)) {
        fail(key, "expected a number");
    }
    if (check) {
        std::string rule = check(out);
        if (!rule.empty()) {
            fail(key, rule);
        }
    }
    resolved_[key] = out;
}

template <typename T>
static void read_list(ConfigReader& r,
                      const YAML::Node& n,
                      const std::string& key,
                      std::vector<T>& out,
                      const ConfigReader::Check& check,
                      bool integer) {
    if (!present(n)) {
        return;
    }
    if (!n.IsSequence()) {
        r.fail(key, "expected a list of numbers");
    }
    out.clear();
    for (const auto& item : n) {
        double v = 0;
        if (!as_double(item, v) || (integer && v != std::floor(v))) {
            r.fail(key, integer ? "expected a list of integers" : "expected a list of numbers");
        }
        if (check) {
            std::string rule = check(v);
            if (!rule.empty()) {
                r.fail(key, "every element " + rule);
            }
        }
        out.push_back(static_cast<T>(v));
    }
}

void ConfigReader::read(const std::string& key,
                        std::vector<double>& out,
                        const std::string& doc,
                        const Check& check) {
    read_list(*this, value_node(key, doc), key, out, check, false);
    resolved_[key] = out;
}

void ConfigReader::read(const std::string& key,
                        std::vector<int64_t>& out,
                        const std::string& doc,
                        const Check& check) {
    read_list(*this, value_node(key, doc), key, out, check, true);
    YAML::Node seq(YAML::NodeType::Sequence);
    for (int64_t v : out) {
        seq.push_back(v);
    }
    resolved_[key] = seq;
}

void ConfigReader::section(const std::string& key,
                           const std::string& doc,
                           const std::function<void(ConfigReader&)>& fn) {
    YAML::Node n = value_node(key, doc);
    ConfigReader sub(present(n) ? n : YAML::Node(YAML::NodeType::Map), key_path(key), source_);
    fn(sub);
    sub.finish();
    resolved_[key] = sub.resolved();
}

YAML::Node ConfigReader::raw(const std::string& key, const std::string& doc) {
    return value_node(key, doc);
}

void ConfigReader::finish() {
    if (!node_ || !node_.IsMap()) {
        return;
    }
    for (auto it = node_.begin(); it != node_.end(); ++it) {
        const std::string key = it->first.Scalar();
        if (std::find(known_.begin(), known_.end(), key) != known_.end()) {
            continue;
        }
        std::string hint = nearest_match(key, known_);
        std::string loc = source_.overridden.count(key_path(key)) != 0
                              ? "--set " + key_path(key)
                              : fmt::format("{}:{}:{}", source_.file, it->first.Mark().line + 1,
                                            it->first.Mark().column + 1);
        throw ConfigError(fmt::format(
            "{}: unknown key {}{}; known keys here: {}", shorten(loc, 200),
            shorten(key_path(key), 120),
            hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint), join(known_, ", ")));
    }
}

ConfigReader::Check ConfigReader::at_least(double lo) {
    return [lo](double v) { return v >= lo ? std::string() : fmt::format("must be >= {}", lo); };
}

ConfigReader::Check ConfigReader::in_range(double lo, double hi) {
    return [lo, hi](double v) {
        return v >= lo && v <= hi ? std::string() : fmt::format("must be in [{}, {}]", lo, hi);
    };
}

ConfigReader::Check ConfigReader::in_open_range(double lo, double hi) {
    return [lo, hi](double v) {
        return v > lo && v <= hi ? std::string() : fmt::format("must be in ({}, {}]", lo, hi);
    };
}

}  // namespace pocketflow
