// How the binding's METH_FASTCALL entries read their arguments (Arguments) and turn C++
// exceptions into Python's (guarded); src/core.cpp alone includes this. Internal linkage, as if
// written there.
#pragma once
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "operand_checks.h"

namespace {

// score, topk and score_pairs take 8 to 13 arguments; pybind11's generic dispatcher spends tens
// of nanoseconds on each (a tuple, a caster, keyword matching), which would add half again to
// the binding's share of a serving call (1 user x 1,000 ads, top-10). They are METH_FASTCALL
// functions instead: the arguments arrive as a C array, by position or keyword, and are read
// by Arguments with the same checks; C++ exceptions become the Python ones pybind11 would raise.
template <std::size_t N>
class Arguments {
 public:
  Arguments(const char* function, const char* const (&names)[N], PyObject* const* args, Py_ssize_t nargs,
            PyObject* kwnames)
      : names_(names) {
    if (nargs > static_cast<Py_ssize_t>(N))
      throw py::type_error(std::string(function) + "() takes " + std::to_string(N) + " arguments, got " +
                           std::to_string(nargs));
    for (Py_ssize_t i = 0; i < nargs; ++i) values_[i] = args[i];
    const Py_ssize_t n_keywords = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < n_keywords; ++j) {
      PyObject* keyword = PyTuple_GET_ITEM(kwnames, j);
      std::size_t i = 0;
      while (i < N && PyUnicode_CompareWithASCIIString(keyword, names[i]) != 0) ++i;
      if (i == N || values_[i] != nullptr)
        throw py::type_error(std::string(function) + "(): " + (i == N ? "unexpected" : "repeated") + " argument '" +
                             std::string(py::str(keyword)) + "'");
      values_[i] = args[nargs + j];
    }
    for (std::size_t i = 0; i < N; ++i)
      if (values_[i] == nullptr)
        throw py::type_error(std::string(function) + "() missing argument '" + names[i] + "'");
  }

  py::object object(std::size_t i) const { return py::reinterpret_borrow<py::object>(values_[i]); }

  py::array array(std::size_t i) const {
    if (!py::isinstance<py::array>(values_[i]))
      throw py::type_error(std::string(names_[i]) + ": expected a numpy array, got " +
                           std::string(py::str(py::type::handle_of(values_[i]).attr("__name__"))));
    return py::reinterpret_borrow<py::array>(values_[i]);
  }

  float real(std::size_t i) const {
    const double value = PyFloat_AsDouble(values_[i]);
    if (value == -1.0 && PyErr_Occurred()) refuse(i, "a real number");
    return static_cast<float>(value);
  }

  long long integer(std::size_t i) const {
    const long long value = PyLong_AsLongLong(values_[i]);
    if (value == -1 && PyErr_Occurred()) refuse(i, "an integer");
    return value;
  }

  int threads(std::size_t i) const {
    const long long value = integer(i);
    require(value >= 1, names_[i], " must be >= 1, got ", value);
    return thread_count(static_cast<int>(std::min<long long>(value, std::numeric_limits<int>::max())));
  }

 private:
  [[noreturn]] void refuse(std::size_t i, const char* expected) const {
    PyErr_Clear();
    throw py::type_error(std::string(names_[i]) + ": expected " + expected + ", got " +
                         std::string(py::str(py::type::handle_of(values_[i]).attr("__name__"))));
  }

  const char* const (&names_)[N];
  PyObject* values_[N] = {};
};

template <class Body>
PyObject* guarded(Body&& body) noexcept {
  try {
    body();
    Py_RETURN_NONE;
  } catch (py::error_already_set& error) {
    error.restore();
  } catch (const py::builtin_exception& error) {
    error.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
  }
  return nullptr;
}

}  // namespace
