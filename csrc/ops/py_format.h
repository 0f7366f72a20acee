// Values spelled as Python spells them, for the operators' error messages: each check must say
// word for word what epi_fast/ops/_checks.py says for the same input (the error tables of
// tests/ops/test_<family>.py hold the reference, the CPU and the CUDA operators to one
// message), so dtypes read torch.float32 (not Float), shapes (2, 3) and (5,), floats and strings
// as repr() writes them, and integers past int64 exactly.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace epi_fast {
namespace py {

// str(dtype): torch.float32, torch.int64, ...
inline std::string dtype(c10::ScalarType t) {
  using S = c10::ScalarType;
  switch (t) {
    case S::Byte: return "torch.uint8";
    case S::Char: return "torch.int8";
    case S::Short: return "torch.int16";
    case S::Int: return "torch.int32";
    case S::Long: return "torch.int64";
    case S::Half: return "torch.float16";
    case S::Float: return "torch.float32";
    case S::Double: return "torch.float64";
    case S::ComplexHalf: return "torch.complex32";
    case S::ComplexFloat: return "torch.complex64";
    case S::ComplexDouble: return "torch.complex128";
    case S::Bool: return "torch.bool";
    case S::BFloat16: return "torch.bfloat16";
    case S::QInt8: return "torch.qint8";
    case S::QUInt8: return "torch.quint8";
    case S::QInt32: return "torch.qint32";
    default: break;
  }
  // Rarer dtypes (float8, unsigned, bits): torch's C++ name, lower-cased as Python has most.
  std::string name = c10::toString(t);
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return "torch." + name;
}

// str(tuple(shape)): (2, 3), (5,), ().
inline std::string shape(c10::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(sizes[i]);
  }
  if (sizes.size() == 1) s += ",";
  return s + ")";
}

// repr(float): the shortest digits that read back as the same double, fixed notation for
// decimal exponents -4 <= e < 16 (with ".0" when integral), scientific with a two-digit
// exponent otherwise: 0.1, 1.0, 1e-05, 1e+16, inf, nan.
inline std::string floating(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  const double ax = std::fabs(x);
  // The shortest significand that reads back as ax, as Python's repr finds it: for each digit
  // count the correctly rounded one (printf's), or else its neighbour in the last digit, which
  // is the one that can still read back where ax's rounding interval is lopsided (at powers of
  // two). ax = sig * 10^exp.
  unsigned long long sig = 0;
  int exp = 0;
  char buf[48];
  for (int digits = 1; digits <= 17 && !sig; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*e", digits - 1, ax);  // d[.ddd]e(+|-)dd
    unsigned long long nearest = 0;
    const char* c = buf;
    for (; *c != 'e'; ++c)
      if (*c != '.') nearest = nearest * 10 + static_cast<unsigned long long>(*c - '0');
    const int e = std::atoi(c + 1) - (digits - 1);
    for (const long long delta : {0LL, 1LL, -1LL}) {
      const unsigned long long candidate = nearest + delta;
      std::snprintf(buf, sizeof buf, "%llue%d", candidate, e);
      if (candidate && std::strtod(buf, nullptr) == ax) {
        sig = candidate;
        exp = e;
        break;
      }
    }
  }
  if (ax == 0.0) sig = 0, exp = 0;
  while (sig && sig % 10 == 0) sig /= 10, ++exp;
  const std::string digits = std::to_string(sig);
  const int point = static_cast<int>(digits.size()) + exp;  // digits[0:point] before the decimal point
  const int exponent = point - 1;                           // of the scientific form d.ddd
  std::string out = std::signbit(x) ? "-" : "";
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out += "0." + std::string(-point, '0') + digits;
    } else if (static_cast<size_t>(point) >= digits.size()) {
      out += digits + std::string(point - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, point) + "." + digits.substr(point);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += tail;
  }
  return out;
}

// repr(str) for the ASCII names the operators take: single quotes unless the text holds one
// and no double quote; backslashes, the quote and control characters escaped.
inline std::string repr(std::string_view s) {
  const char quote = (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\\' || c == quote) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out + quote;
}

// A sum or an end of range that int64 cannot hold (sizes near 2^63), printed exactly.
inline std::string integer(__int128 v) {
  if (v == 0) return "0";
  const bool negative = v < 0;
  unsigned __int128 u = negative ? -static_cast<unsigned __int128>(v) : static_cast<unsigned __int128>(v);
  std::string digits;
  while (u) {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  }
  return negative ? "-" + digits : digits;
}

}  // namespace py
}  // namespace epi_fast
