// segml/train/plot.hpp: tiny dependency-free SVG charts for training reports.
//
// line_plot_svg(): lines over a shared x axis with a left and an optional right y axis ("nice"
// ticks: 1, 2, 5 x 10^k), optionally a second, lower panel on the same x axis (the Trainer's
// learning rate), axis labels, a title and a legend in a band above the panels (never over the
// data). heatmap_svg(): a labelled matrix (e.g. a row-normalised confusion matrix, values in
// [0, 1]) with class names on both axes and each non-zero cell's value printed as a percentage
// with one decimal ("87.3"). Output is plain SVG 1.1 text; NaN points are skipped.
// Does not: log scales, dates, interactivity.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace segml::train {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::string color = "#1f77b4";
  bool right_axis = false;  // plotted against the right y axis
  bool markers = false;     // draw a dot at each point
};

namespace detail {

inline std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

inline std::string fmt(double v, int precision = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

// Ticks covering [lo, hi] at a 1/2/5 x 10^k step, about `target` of them; widens lo/hi to them.
inline std::vector<double> nice_ticks(double& lo, double& hi, int target = 6) {
  if (!(hi > lo)) {
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad, hi += pad;
  }
  const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
  std::vector<double> ticks;
  for (double t = lo; t <= hi + step * 1e-6; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

}  // namespace detail

namespace detail {

// The y range of the series on one axis (NaN skipped); [0, 1] when there is none.
inline void y_range(const std::vector<Series>& series, bool right, double& lo, double& hi) {
  const double inf = std::numeric_limits<double>::infinity();
  lo = inf, hi = -inf;
  for (const Series& s : series)
    if (s.right_axis == right)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (!std::isnan(s.y[i])) lo = std::min(lo, s.y[i]), hi = std::max(hi, s.y[i]);
  if (lo == inf) lo = 0, hi = 1;
}

// One panel: frame at (ml, top) of size pw x ph, grid, y ticks (left, and right when right_label is
// set), the lines; x ticks `xt` over [x0, x1] are labelled when `x_labels`.
inline void draw_panel(std::ostringstream& os, double ml, double top, double pw, double ph, double x0, double x1,
                       const std::vector<double>& xt, bool x_labels, const std::string& left_label,
                       const std::string& right_label, const std::vector<Series>& series, bool from_zero) {
  double l0, l1, r0, r1;
  y_range(series, false, l0, l1);
  y_range(series, true, r0, r1);
  if (from_zero) l0 = std::min(l0, 0.0);
  if (!right_label.empty()) r0 = std::min(r0, 0.0);  // metrics read best from 0
  const std::vector<double> lt = nice_ticks(l0, l1, ph < 200 ? 3 : 6), rt = nice_ticks(r0, r1, ph < 200 ? 3 : 6);
  auto X = [&](double v) { return ml + (v - x0) / (x1 - x0) * pw; };
  auto Y = [&](double v, bool right) {
    const double a = right ? r0 : l0, b = right ? r1 : l1;
    return top + ph - (v - a) / (b - a) * ph;
  };
  for (double t : xt) {
    os << "<line x1=\"" << X(t) << "\" y1=\"" << top << "\" x2=\"" << X(t) << "\" y2=\"" << top + ph
       << "\" stroke=\"#e5e5e5\"/>\n";
    if (x_labels)
      os << "<text x=\"" << X(t) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">" << fmt(t) << "</text>\n";
  }
  for (double t : lt)
    os << "<line x1=\"" << ml << "\" y1=\"" << Y(t, false) << "\" x2=\"" << ml + pw << "\" y2=\"" << Y(t, false)
       << "\" stroke=\"#e5e5e5\"/>\n<text x=\"" << ml - 8 << "\" y=\"" << Y(t, false) + 4 << "\" text-anchor=\"end\">"
       << fmt(t) << "</text>\n";
  if (!right_label.empty())
    for (double t : rt)
      os << "<text x=\"" << ml + pw + 8 << "\" y=\"" << Y(t, true) + 4 << "\">" << fmt(t) << "</text>\n";
  os << "<rect x=\"" << ml << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
     << "\" fill=\"none\" stroke=\"black\"/>\n"
     << "<text transform=\"translate(22," << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
     << xml_escape(left_label) << "</text>\n";
  if (!right_label.empty())
    os << "<text transform=\"translate(" << ml + pw + 60 << "," << top + ph / 2 << ") rotate(90)\" text-anchor=\"middle\">"
       << xml_escape(right_label) << "</text>\n";
  for (const Series& s : series) {
    os << "<polyline class=\"series\" data-name=\"" << xml_escape(s.name) << "\" fill=\"none\" stroke=\"" << s.color
       << "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (!std::isnan(s.y[i])) os << fmt(X(s.x[i]), 6) << "," << fmt(Y(s.y[i], s.right_axis), 6) << " ";
    os << "\"/>\n";
    if (s.markers)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (!std::isnan(s.y[i]))
          os << "<circle cx=\"" << X(s.x[i]) << "\" cy=\"" << Y(s.y[i], s.right_axis) << "\" r=\"3\" fill=\"" << s.color
             << "\"/>\n";
  }
}

// The legend entries laid out in rows from (x, y), wrapping at x + width (about 7 px per
// character); returns the height used. Drawn outside the plot frames, so it never hides data.
inline double legend_rows(std::ostringstream* os, double x, double y, double width, const std::vector<const Series*>& series,
                          const std::vector<std::string>& suffix) {
  double cx = x, cy = y;
  for (size_t i = 0; i < series.size(); ++i) {
    const std::string text = series[i]->name + suffix[i];
    const double w = 34 + 7.0 * static_cast<double>(text.size());
    if (cx > x && cx + w > x + width) cx = x, cy += 18;
    if (os)
      *os << "<line x1=\"" << cx << "\" y1=\"" << cy - 4 << "\" x2=\"" << cx + 25 << "\" y2=\"" << cy - 4 << "\" stroke=\""
          << series[i]->color << "\" stroke-width=\"2\"/>\n<text class=\"legend\" x=\"" << cx + 30 << "\" y=\"" << cy
          << "\">" << xml_escape(text) << "</text>\n";
    cx += w + 12;
  }
  return cy - y + 18;
}

}  // namespace detail

// Lines over a shared x axis: `series` in the main panel (left axis, and a right axis for series
// with right_axis when right_label is set) and, when `lower` is not empty, a second panel below it
// on the same x axis with its own left axis `lower_label` (e.g. the learning rate). The legend is a
// band between the title and the panels: it never covers a line.
inline std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& left_label,
                                 const std::string& right_label, const std::vector<Series>& series,
                                 const std::vector<Series>& lower = {}, const std::string& lower_label = "") {
  const double W = 820, ml = 80, mr = right_label.empty() ? 30 : 80, pw = W - ml - mr;
  std::vector<const Series*> all;
  std::vector<std::string> suffix;
  for (const Series& s : series)
    all.push_back(&s), suffix.push_back(s.right_axis && !right_label.empty() ? " (right axis)" : "");
  for (const Series& s : lower) all.push_back(&s), suffix.push_back(" (lower panel)");
  const double legend_h = detail::legend_rows(nullptr, ml, 0, pw, all, suffix);
  const double mt = 42 + legend_h + 8, ph = 360, gap = 28, lower_h = lower.empty() ? 0 : 130, mb = 50;
  const double H = mt + ph + (lower.empty() ? 0 : gap + lower_h) + mb;
  const double inf = std::numeric_limits<double>::infinity();
  double x0 = inf, x1 = -inf;
  for (const Series* s : all)
    for (size_t i = 0; i < s->x.size() && i < s->y.size(); ++i)
      if (!std::isnan(s->y[i])) x0 = std::min(x0, s->x[i]), x1 = std::max(x1, s->x[i]);
  if (x0 == inf) x0 = 0, x1 = 1;
  const std::vector<double> xt = detail::nice_ticks(x0, x1);
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">" << detail::xml_escape(title)
     << "</text>\n";
  detail::legend_rows(&os, ml, 42 + 12, pw, all, suffix);
  detail::draw_panel(os, ml, mt, pw, ph, x0, x1, xt, lower.empty(), left_label, right_label, series, true);
  if (!lower.empty())
    detail::draw_panel(os, ml, mt + ph + gap, pw, lower_h, x0, x1, xt, true, lower_label, "", lower, true);
  os << "<text x=\"" << ml + pw / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">" << detail::xml_escape(x_label)
     << "</text>\n</svg>\n";
  return os.str();
}

// values: rows x cols, row-major, in [0, 1] (NaN cells are left grey).
inline std::string heatmap_svg(const std::string& title, const std::vector<double>& values,
                               const std::vector<std::string>& row_names, const std::vector<std::string>& col_names,
                               const std::string& row_label, const std::string& col_label) {
  const double cell = 44, ml = 150, mt = 140, mr = 30, mb = 40;
  const size_t R = row_names.size(), C = col_names.size();
  const double W = ml + cell * static_cast<double>(C) + mr, H = mt + cell * static_cast<double>(R) + mb;
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << detail::xml_escape(title)
     << "</text>\n"
     << "<text x=\"" << ml + cell * static_cast<double>(C) / 2 << "\" y=\"44\" text-anchor=\"middle\">"
     << detail::xml_escape(col_label) << "</text>\n"
     << "<text transform=\"translate(16," << mt + cell * static_cast<double>(R) / 2
     << ") rotate(-90)\" text-anchor=\"middle\">" << detail::xml_escape(row_label) << "</text>\n";
  for (size_t c = 0; c < C; ++c)
    os << "<text transform=\"translate(" << ml + cell * (static_cast<double>(c) + 0.6) << "," << mt - 6
       << ") rotate(-60)\">" << detail::xml_escape(col_names[c]) << "</text>\n";
  for (size_t r = 0; r < R; ++r) {
    const double y = mt + cell * static_cast<double>(r);
    os << "<text x=\"" << ml - 6 << "\" y=\"" << y + cell / 2 + 4 << "\" text-anchor=\"end\">"
       << detail::xml_escape(row_names[r]) << "</text>\n";
    for (size_t c = 0; c < C; ++c) {
      const double v = values[r * C + c], x = ml + cell * static_cast<double>(c);
      std::string fill = "#dddddd";
      if (!std::isnan(v)) {  // white -> dark blue
        const double t = std::clamp(v, 0.0, 1.0);
        char buf[16];
        std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(255 - 247 * t), int(255 - 207 * t), int(255 - 148 * t));
        fill = buf;
      }
      os << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell << "\" height=\"" << cell << "\" fill=\"" << fill
         << "\" stroke=\"white\"/>\n";
      if (!std::isnan(v) && v > 0) {  // a percentage with one decimal; empty cells stay blank
        char pct[16];
        std::snprintf(pct, sizeof pct, "%.1f", 100.0 * std::clamp(v, 0.0, 1.0));
        os << "<text x=\"" << x + cell / 2 << "\" y=\"" << y + cell / 2 + 4 << "\" text-anchor=\"middle\" font-size=\"10\" fill=\""
           << (v > 0.5 ? "white" : "black") << "\">" << pct << "</text>\n";
      }
    }
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace segml::train
