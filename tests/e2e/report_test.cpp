// SPDX-License-Identifier: Apache-2.0
// End-to-end test of `pocketflow report`: real runs (a sweep, a search, a deep-compression
// pipeline) into one HTML page, opened in headless Chromium: the charts must be drawn, the
// console clean, the screenshot not blank.
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <png.h>

#include "pocketflow/util.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

/// Debian's chromium (tools/setup.sh --browser installs it), or $POCKETFLOW_CHROMIUM.
std::string chromium() {
    if (const char* env = std::getenv("POCKETFLOW_CHROMIUM"); env && *env) {
        return env;
    }
    for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
        if (fs::exists(p)) {
            return p;
        }
    }
    return "";
}

std::string browser_command(const std::string& browser, const testing::TempDir& dir) {
    // --no-sandbox: CI containers run as root; a profile of its own per test.
    return fmt::format(
        "timeout 120 '{}' --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
        "--no-first-run "
        "--user-data-dir='{}' --enable-logging=stderr --v=0 ",
        browser, dir.file("chromium-profile"));
}

/// The attributes of the page's <body> once its scripts ran.
std::map<std::string, std::string> body_attributes(const std::string& dom) {
    std::map<std::string, std::string> out;
    std::smatch body;
    if (!std::regex_search(dom, body, std::regex("<body([^>]*)>"))) {
        return out;
    }
    const std::string attrs = body[1];
    const std::regex attr("([a-z-]+)=\"([^\"]*)\"");
    for (auto it = std::sregex_iterator(attrs.begin(), attrs.end(), attr);
         it != std::sregex_iterator(); ++it) {
        out[(*it)[1]] = (*it)[2];
    }
    return out;
}

struct PngStats {
    int width = 0, height = 0;
    double inked = 0;   ///< fraction of pixels that are not the page background
    size_t colors = 0;  ///< distinct colours (charts draw several)
};

PngStats png_stats(const std::string& path) {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    PngStats s;
    if (!png_image_begin_read_from_file(&image, path.c_str())) {
        ADD_FAILURE() << "not a PNG: " << path;
        return s;
    }
    image.format = PNG_FORMAT_RGB;
    std::vector<uint8_t> px(PNG_IMAGE_SIZE(image));
    if (!png_image_finish_read(&image, nullptr, px.data(), 0, nullptr)) {
        ADD_FAILURE() << "unreadable PNG: " << path;
        return s;
    }
    s.width = static_cast<int>(image.width);
    s.height = static_cast<int>(image.height);
    std::set<uint32_t> colors;
    size_t inked = 0;
    const size_t n = px.size() / 3;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t c = (px[3 * i] << 16) | (px[3 * i + 1] << 8) | px[3 * i + 2];
        colors.insert(c);
        inked += c != 0xffffff && c != 0xf6f7f9 ? 1 : 0;  // white, or the page's background
    }
    s.inked = static_cast<double>(inked) / static_cast<double>(std::max<size_t>(1, n));
    s.colors = colors.size();
    return s;
}

TEST(ReportTest, RealRunsRenderInHeadlessChromium) {
    const std::string browser = chromium();
    ASSERT_FALSE(browser.empty())
        << "headless Chromium is needed: tools/setup.sh --browser installs Debian's chromium "
           "(or set POCKETFLOW_CHROMIUM)";
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    // A sweep of two pruning budgets, timed; a searched pruning; a deep-compression pipeline.
    Result sweep = cli("--json sweep --config job.yaml " + from_base +
                           "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.5, "
                           "criterion: l1, channel_multiple: 1, finetune_epochs: 1}]' "
                           "--grid pipeline.0.flops_target=0.5,0.8 --out sw --latency 4",
                       dir);
    ASSERT_EQ(sweep.code, 0) << sweep.err;
    Result search = cli("compress --config job.yaml --set output_dir=auto " + from_base +
                            "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.7, "
                            "ratios: auto, channel_multiple: 1, criterion: l1, finetune_epochs: "
                            "1, search: {episodes: 6, warmup: 3}}]'",
                        dir);
    ASSERT_EQ(search.code, 0) << search.err;
    Result dc = cli("compress --config job.yaml --set output_dir=dc " + from_base +
                        "--set 'pipeline=[{learner: weight_sparsification, sparsity: 0.7, "
                        "begin: 0, end: 0.5, frequency: 4, epochs: 1}, {learner: "
                        "nonuniform_quantization, bits: 4, epochs: 1, lr: 0.0001}]'",
                    dir);
    ASSERT_EQ(dc.code, 0) << dc.err;

    Result report =
        cli("--json report sw auto dc base --title 'a <b>report</b>' -o out/r.html", dir);
    ASSERT_EQ(report.code, 0) << report.err;
    EXPECT_EQ(json::parse(report.out)["runs"], 5);  // 2 sweep runs, auto, dc, base
    const std::string html = read_file(dir.file("out/r.html"));
    EXPECT_NE(html.find("Chart.js v3"), std::string::npos);  // the library is inlined
    EXPECT_EQ(html.find("<script src"), std::string::npos);  // nothing fetched: opens offline
    EXPECT_EQ(html.find("<link"), std::string::npos);
    EXPECT_NE(html.find("a &lt;b&gt;report&lt;/b&gt;"), std::string::npos);  // escaped title

    // The page after its scripts ran: every chart drawn, no error, the expected kinds.
    const std::string page = "file://" + dir.file("out/r.html");
    Result dom = shell(browser_command(browser, dir) + "--dump-dom '" + page + "'", dir);
    ASSERT_EQ(dom.code, 0) << dom.err;
    const auto body = body_attributes(dom.out);
    ASSERT_EQ(body.count("data-status"), 1u) << "the page's script did not finish\n" << dom.err;
    EXPECT_EQ(body.at("data-status"), "rendered");
    EXPECT_EQ(body.at("data-errors"), "0") << dom.out.substr(dom.out.find("render-status"), 400);
    const int charts = std::stoi(body.at("data-charts"));
    EXPECT_GE(charts, 12);
    EXPECT_EQ(body.at("data-painted"), body.at("data-charts"));
    std::map<std::string, int> kinds;
    const std::regex figure("data-kind=\"([a-z_-]+)\" data-painted=\"1\"");
    for (auto it = std::sregex_iterator(dom.out.begin(), dom.out.end(), figure);
         it != std::sregex_iterator(); ++it) {
        ++kinds[(*it)[1]];
    }
    EXPECT_EQ(kinds["curves"], 5);    // every run trained or fine-tuned
    EXPECT_EQ(kinds["channels"], 5);  // every run's layers
    EXPECT_EQ(kinds["pareto-macs"], 1);
    EXPECT_EQ(kinds["pareto-latency_ms"], 1);  // the sweep's runs were timed
    EXPECT_EQ(kinds["search"], 1);
    EXPECT_EQ(kinds["sparsity"], 1);
    EXPECT_EQ(kinds["bits"], 1);
    std::istringstream console(dom.err);
    for (std::string line; std::getline(console, line);) {  // the browser's console: no error
        if (line.find(":CONSOLE") != std::string::npos) {
            EXPECT_EQ(line.find("Uncaught"), std::string::npos) << line;
            EXPECT_EQ(line.find("Error"), std::string::npos) << line;
        }
    }
    // The screenshot: the charts' colours on the page, not a blank one.
    Result shot = shell(browser_command(browser, dir) + "--window-size=1280,1600 --screenshot='" +
                            dir.file("out/r.png") + "' '" + page + "'",
                        dir);
    ASSERT_EQ(shot.code, 0) << shot.err;
    const PngStats png = png_stats(dir.file("out/r.png"));
    EXPECT_EQ(png.width, 1280);
    EXPECT_EQ(png.height, 1600);
    EXPECT_GT(png.inked, 0.03);
    EXPECT_GT(png.colors, 200u);

    // Bad input: named, exit 2.
    Result missing = cli("report nowhere -o x.html", dir);
    EXPECT_EQ(missing.code, 2);
    EXPECT_NE(missing.err.find("nowhere"), std::string::npos) << missing.err;
    Result not_a_run = cli("report out -o x.html", dir);
    EXPECT_EQ(not_a_run.code, 2);
    EXPECT_NE(not_a_run.err.find("neither a run directory"), std::string::npos) << not_a_run.err;
    Result no_chartjs = cli("report dc --chartjs nowhere.js -o x.html", dir);
    EXPECT_EQ(no_chartjs.code, 2);
    EXPECT_NE(no_chartjs.err.find("nowhere.js"), std::string::npos) << no_chartjs.err;
    write_file_atomic(dir.file("dc/summary.json"), "{\"top1\": ");
    Result torn = cli("report dc -o x.html", dir);
    EXPECT_EQ(torn.code, 2);
    EXPECT_NE(torn.err.find("dc/summary.json"), std::string::npos) << torn.err;
    EXPECT_FALSE(fs::exists(dir.path() / "x.html"));  // nothing half-written
}

}  // namespace
}  // namespace pocketflow
