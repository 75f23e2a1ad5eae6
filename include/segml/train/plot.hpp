// segml/train/plot.hpp: tiny dependency-free SVG charts for training reports.
//
// line_plot_svg(): lines over a shared x axis with a left and an optional right y axis ("nice"
// ticks: 1, 2, 5 x 10^k), axis labels, a title and a legend. heatmap_svg(): a labelled matrix
// (e.g. a row-normalised confusion matrix, values in [0, 1]) with class names on both axes and
// each cell's value printed. Output is plain SVG 1.1 text; NaN points are skipped.
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

inline std::string line_plot_svg(const std::string& title, const std::string& x_label, const std::string& left_label,
                                 const std::string& right_label, const std::vector<Series>& series) {
  const double W = 820, H = 480, ml = 80, mr = right_label.empty() ? 30 : 80, mt = 50, mb = 60;
  const double pw = W - ml - mr, ph = H - mt - mb;
  const double inf = std::numeric_limits<double>::infinity();
  double x0 = inf, x1 = -inf, l0 = inf, l1 = -inf, r0 = inf, r1 = -inf;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (std::isnan(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      (s.right_axis ? r0 : l0) = std::min(s.right_axis ? r0 : l0, s.y[i]);
      (s.right_axis ? r1 : l1) = std::max(s.right_axis ? r1 : l1, s.y[i]);
    }
  if (x0 == inf) x0 = 0, x1 = 1;
  if (l0 == inf) l0 = 0, l1 = 1;
  if (r0 == inf) r0 = 0, r1 = 1;
  if (!right_label.empty()) r0 = std::min(r0, 0.0);  // metrics read best from 0
  l0 = std::min(l0, 0.0);
  const std::vector<double> xt = detail::nice_ticks(x0, x1), lt = detail::nice_ticks(l0, l1), rt = detail::nice_ticks(r0, r1);
  auto X = [&](double v) { return ml + (v - x0) / (x1 - x0) * pw; };
  auto Y = [&](double v, bool right) {
    const double a = right ? r0 : l0, b = right ? r1 : l1;
    return mt + ph - (v - a) / (b - a) * ph;
  };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" << detail::xml_escape(title)
     << "</text>\n";
  for (double t : xt)
    os << "<line x1=\"" << X(t) << "\" y1=\"" << mt << "\" x2=\"" << X(t) << "\" y2=\"" << mt + ph
       << "\" stroke=\"#e5e5e5\"/>\n<text x=\"" << X(t) << "\" y=\"" << mt + ph + 18 << "\" text-anchor=\"middle\">"
       << detail::fmt(t) << "</text>\n";
  for (double t : lt)
    os << "<line x1=\"" << ml << "\" y1=\"" << Y(t, false) << "\" x2=\"" << ml + pw << "\" y2=\"" << Y(t, false)
       << "\" stroke=\"#e5e5e5\"/>\n<text x=\"" << ml - 8 << "\" y=\"" << Y(t, false) + 4 << "\" text-anchor=\"end\">"
       << detail::fmt(t) << "</text>\n";
  if (!right_label.empty())
    for (double t : rt)
      os << "<text x=\"" << ml + pw + 8 << "\" y=\"" << Y(t, true) + 4 << "\">" << detail::fmt(t) << "</text>\n";
  os << "<rect x=\"" << ml << "\" y=\"" << mt << "\" width=\"" << pw << "\" height=\"" << ph
     << "\" fill=\"none\" stroke=\"black\"/>\n"
     << "<text x=\"" << ml + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">" << detail::xml_escape(x_label)
     << "</text>\n"
     << "<text transform=\"translate(22," << mt + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
     << detail::xml_escape(left_label) << "</text>\n";
  if (!right_label.empty())
    os << "<text transform=\"translate(" << W - 20 << "," << mt + ph / 2 << ") rotate(90)\" text-anchor=\"middle\">"
       << detail::xml_escape(right_label) << "</text>\n";
  for (const Series& s : series) {
    os << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (!std::isnan(s.y[i])) os << detail::fmt(X(s.x[i]), 6) << "," << detail::fmt(Y(s.y[i], s.right_axis), 6) << " ";
    os << "\"/>\n";
    if (s.markers)
      for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (!std::isnan(s.y[i]))
          os << "<circle cx=\"" << X(s.x[i]) << "\" cy=\"" << Y(s.y[i], s.right_axis) << "\" r=\"3\" fill=\"" << s.color
             << "\"/>\n";
  }
  double ly = mt + 18;
  os << "<rect x=\"" << ml + pw - 198 << "\" y=\"" << mt + 4 << "\" width=\"192\" height=\""
     << 18 * static_cast<double>(series.size()) + 6 << "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#cccccc\"/>\n";
  for (const Series& s : series) {
    os << "<line x1=\"" << ml + pw - 190 << "\" y1=\"" << ly - 4 << "\" x2=\"" << ml + pw - 165 << "\" y2=\"" << ly - 4
       << "\" stroke=\"" << s.color << "\" stroke-width=\"2\"/>\n<text x=\"" << ml + pw - 158 << "\" y=\"" << ly << "\">"
       << detail::xml_escape(s.name + (s.right_axis && !right_label.empty() ? " (right axis)" : "")) << "</text>\n";
    ly += 18;
  }
  os << "</svg>\n";
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
      if (!std::isnan(v))
        os << "<text x=\"" << x + cell / 2 << "\" y=\"" << y + cell / 2 + 4 << "\" text-anchor=\"middle\" fill=\""
           << (v > 0.5 ? "white" : "black") << "\">" << detail::fmt(v, 2) << "</text>\n";
    }
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace segml::train
