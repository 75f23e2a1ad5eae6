// What evaluate and the Trainer print and draw: the confusion matrix as row-normalised percentages
// (train::confusion_table), the heatmap's cell labels, and the training curves with the learning
// rate in a panel of its own and the legend outside the plot frames (train/plot.hpp).
#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include <segml/train/evaluation.hpp>
#include <segml/train/plot.hpp>

using namespace segml;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The number in `attr="..."` of every element (from `<` to the next `>`) that starts with `start`
// and contains `contains`.
std::vector<double> attr_values(const std::string& svg, const std::string& start, const std::string& contains,
                                const std::string& attr) {
  std::vector<double> out;
  for (size_t pos = svg.find(start); pos != std::string::npos; pos = svg.find(start, pos + 1)) {
    const size_t close = svg.find('>', pos);
    if (close == std::string::npos) break;
    const std::string el = svg.substr(pos, close - pos + 1);
    if (el.find(contains) == std::string::npos) continue;
    const size_t at = el.find(" " + attr + "=\"");
    if (at != std::string::npos) out.push_back(std::stod(el.substr(at + attr.size() + 3)));
  }
  return out;
}

}  // namespace

TEST_CASE("confusion_table: row-normalised percentages, fixed width, a legend line, never scientific notation") {
  // Row 0: 2 000 000 pixels of which one is predicted as class 2 (5e-5 %); row 1: 3/4 right;
  // row 2: no pixels at all.
  const std::vector<double> counts = {1999999, 0, 1, 100, 300, 0, 0, 0, 0};
  const std::string t = train::confusion_table(counts, {"road", "a long class name", "sky"}, {"road", "a long class name", "sky"});
  INFO(t);
  CHECK(t.find("rows = ground truth") != std::string::npos);
  CHECK(t.find("columns = prediction") != std::string::npos);
  CHECK(t.find("% of the row") != std::string::npos);
  CHECK(t.find("e-") == std::string::npos);
  CHECK(t.find("e+") == std::string::npos);
  const std::vector<std::string> lines = lines_of(t);
  REQUIRE(lines.size() == 5);  // legend, header, 3 rows
  // Every row and the header have the same width: the columns line up.
  for (size_t i = 2; i < lines.size(); ++i) CHECK(lines[i].size() == lines[1].size());
  CHECK(lines[2].find(" 100.0     .   0.0") != std::string::npos);
  CHECK(lines[3].find("  25.0  75.0     .") != std::string::npos);
  CHECK(lines[4].find("     -     -     -") != std::string::npos);
  CHECK(lines[3].find("a long class name") != std::string::npos);
  // An extra prediction column (zero-shot's "no class") is named under the table.
  const std::string z = train::confusion_table({1, 1}, {"road"}, {"road", "(no class)"});
  CHECK(z.find("column 1 = (no class)") != std::string::npos);
  CHECK(z.find("  50.0  50.0") != std::string::npos);
  CHECK_THROWS_AS(train::confusion_table({1, 2, 3}, {"a", "b"}, {"a", "b"}), Error);
}

TEST_CASE("heatmap_svg: cells read as percentages with one decimal, empty cells blank") {
  const std::string svg = train::heatmap_svg("c", {0.873, 0.127, 0.0, 1.0}, {"a", "b"}, {"a", "b"}, "ground truth", "prediction");
  CHECK(svg.find(">87.3<") != std::string::npos);
  CHECK(svg.find(">12.7<") != std::string::npos);
  CHECK(svg.find(">100.0<") != std::string::npos);
  CHECK(svg.find(">0.0<") == std::string::npos);
  CHECK(svg.find("e-0") == std::string::npos);
}

TEST_CASE("line_plot_svg: the learning rate gets its own panel and the legend lies outside both frames") {
  train::Series loss{"training loss", {}, {}, "#1f77b4", false, false};
  train::Series lr{"learning rate", {}, {}, "#2ca02c", false, false};
  for (int s = 1; s <= 100; ++s) {
    loss.x.push_back(s), loss.y.push_back(3.0 / s);
    lr.x.push_back(s), lr.y.push_back(6e-5 * (1.0 - s / 100.0));
  }
  const std::string svg = train::line_plot_svg("curves", "step", "loss", "", {loss}, {lr}, "learning rate");
  CHECK(svg.find("data-name=\"learning rate\"") != std::string::npos);
  CHECK(svg.find("learning rate (lower panel)") != std::string::npos);
  // Two frames (panels); every legend text sits above the first one.
  const std::vector<double> frame_y = attr_values(svg, "<rect x=", "fill=\"none\" stroke=\"black\"/>", "y");
  REQUIRE(frame_y.size() == 2);
  const std::vector<double> legend_y = attr_values(svg, "<text class=\"legend\"", "", "y");
  REQUIRE(legend_y.size() == 2);
  for (double y : legend_y) CHECK(y < frame_y[0]);
  // Without a lower panel: one frame, the legend still above it.
  const std::string one = train::line_plot_svg("curves", "step", "loss", "", {loss});
  CHECK(attr_values(one, "<rect x=", "fill=\"none\" stroke=\"black\"/>", "y").size() == 1);
}
