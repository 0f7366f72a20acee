// The Python module epi_fast._C. Loading it registers the operators (the static registrations in
// csrc/ops/<family>.cpp); the module itself holds the build facts, the CPU SIMD controls, the
// wrappers' schema-form predicates and the test-only hooks. Nothing here takes or returns a
// tensor, so it is written against Python's C API alone: pybind11 would cost this TU ~6 s of
// compile time and each call ~50 ns, torch/extension.h half a minute.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <climits>
#include <string>

#include "cpu/simd_level.h"
#include "test_hooks.h"
#ifdef EPI_FAST_WITH_CUDA
#include "cuda/test_kernels.h"
#endif

// The torch release this module was compiled against, from setup.py: the loader compares it
// with the running torch before trusting the binary.
#ifndef EPI_FAST_TORCH_MAJOR
#define EPI_FAST_TORCH_MAJOR 0
#define EPI_FAST_TORCH_MINOR 0
#define EPI_FAST_TORCH_PATCH 0
#endif

#define EPI_STRINGIFY_(x) #x
#define EPI_STRINGIFY(x) EPI_STRINGIFY_(x)
#define EPI_PYINIT_(name) PyInit_##name
#define EPI_PYINIT(name) EPI_PYINIT_(name)

namespace {

using namespace epi_fast;

PyTypeObject* g_tensor_type = nullptr;  // torch.Tensor, looked up when the module loads

PyObject* to_bool(bool value) { return PyBool_FromLong(value); }

// The items of a list or tuple, or false.
bool sequence_items(PyObject* obj, PyObject*** items, Py_ssize_t* n) {
  if (!PyList_Check(obj) && !PyTuple_Check(obj)) return false;
  *items = PySequence_Fast_ITEMS(obj);
  *n = PySequence_Fast_GET_SIZE(obj);
  return true;
}

// The predicates below tell the Python wrappers that an argument is already what the schema
// takes, with the meaning the Python API gives it, in about 1 ns an item (the same test in
// Python costs 15-30 ns an item, 2-5 us a call on a ResNet-50's 161 tensors). Anything else goes
// through epi_fast/ops/_checks.py, which converts it or names what is wrong.

// A non-empty list or tuple of tensors (Tensor[]; an empty one gives the dispatcher no device).
PyObject* tensor_list(PyObject*, PyObject* obj) {
  PyObject** items;
  Py_ssize_t n;
  if (!sequence_items(obj, &items, &n) || n == 0) return to_bool(false);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!PyObject_TypeCheck(items[i], g_tensor_type)) return to_bool(false);
  return to_bool(true);
}

// A list or tuple of Python ints (bool included, as operator.index takes it) that int64 holds,
// whose non-negative items also add up within int64: int[] arguments whose sums the operators'
// checks compute exactly (a sum past 2^63 goes to the Python checks, which name its value).
PyObject* int_list(PyObject*, PyObject* obj) {
  PyObject** items;
  Py_ssize_t n;
  if (!sequence_items(obj, &items, &n)) return to_bool(false);
  long long sum = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!PyLong_Check(items[i])) return to_bool(false);
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(items[i], &overflow);
    if (overflow) return to_bool(false);
    if (v > 0) {
      if (v > LLONG_MAX - sum) return to_bool(false);
      sum += v;
    }
  }
  return to_bool(true);
}

// A list or tuple of Python floats (float[]); not ints, not bools (the schema would read a bool
// as a ratio of 0.0 or 1.0 where the reference refuses it).
PyObject* float_list(PyObject*, PyObject* obj) {
  PyObject** items;
  Py_ssize_t n;
  if (!sequence_items(obj, &items, &n)) return to_bool(false);
  for (Py_ssize_t i = 0; i < n; ++i)
    if (!PyFloat_Check(items[i])) return to_bool(false);
  return to_bool(true);
}

PyObject* cpu_simd(PyObject*, PyObject*) { return PyUnicode_FromString(cpu::simd_level_name(cpu::simd_level())); }

PyObject* set_cpu_simd(PyObject*, PyObject* enabled) {
  const int on = PyObject_IsTrue(enabled);
  if (on < 0) return nullptr;
  return to_bool(cpu::exchange_simd_cap(on ? cpu::kBest : cpu::kPortable) != cpu::kPortable);
}

PyObject* set_cpu_simd_level(PyObject*, PyObject* level) {
  const char* name = PyUnicode_AsUTF8(level);
  if (!name) return nullptr;
  const int cap = cpu::simd_level_from_name(name);
  if (cap < 0) {
    PyErr_Format(PyExc_ValueError, "unknown SIMD level '%s'; expected %s", name, cpu::simd_level_names());
    return nullptr;
  }
  return PyUnicode_FromString(cpu::simd_level_name(cpu::exchange_simd_cap(cap)));
}

PyObject* test_reset(PyObject*, PyObject*) {
  test_hooks::reset();
  Py_RETURN_NONE;
}

PyObject* test_disable(PyObject*, PyObject*) {
  test_hooks::disable();
  Py_RETURN_NONE;
}

PyObject* test_arm_fault(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"op", "stage", "kind", nullptr};
  const char *op, *stage, *kind = "runtime";
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ss|s", const_cast<char**>(keywords), &op, &stage, &kind))
    return nullptr;
  if (!test_hooks::arm(op, stage, kind)) {
    PyErr_Format(PyExc_ValueError, "unknown fault kind '%s'; expected 'runtime', 'value', 'type' or 'oom'", kind);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* test_calls(PyObject*, PyObject* op) {
  const char* name = PyUnicode_AsUTF8(op);
  if (!name) return nullptr;
  return PyLong_FromLongLong(test_hooks::calls(name));
}

// Test only: leaves a (non-sticky) CUDA launch error pending, as an unchecked earlier launch would;
// returns its code, or None in a build without CUDA kernels.
PyObject* test_leave_cuda_error(PyObject*, PyObject*) {
#ifdef EPI_FAST_WITH_CUDA
  return PyLong_FromLong(cuda::leave_pending_error());
#else
  Py_RETURN_NONE;
#endif
}

PyMethodDef methods[] = {
    {"cpu_simd", cpu_simd, METH_NOARGS,
     "The CPU row kernels in use: 'avx512' (where the CPU has AVX-512F), 'avx2' (AVX2 and F16C) or 'portable', "
     "picked at run time."},
    {"set_cpu_simd", set_cpu_simd, METH_O,
     "set_cpu_simd(enabled): allow (True: the best the CPU has) or forbid (False) the SIMD CPU row kernels; returns "
     "whether they were allowed. All give the same bits; this exists to test and time them. It does not restore a "
     "cap set by set_cpu_simd_level: restore that with the level name set_cpu_simd_level returned."},
    {"set_cpu_simd_level", set_cpu_simd_level, METH_O,
     "set_cpu_simd_level(level): cap the CPU row kernels at 'avx512', 'avx2' or 'portable' (the CPU may allow "
     "less); returns the previous cap."},
    {"_tensor_list", tensor_list, METH_O, "Whether obj is a non-empty list or tuple of tensors."},
    {"_int_list", int_list, METH_O,
     "Whether obj is a list or tuple of ints within int64 whose non-negative items add up within int64."},
    {"_float_list", float_list, METH_O, "Whether obj is a list or tuple of floats."},
    {"_test_reset", test_reset, METH_NOARGS, "Test only: count operator entries from zero; clear any armed fault."},
    {"_test_disable", test_disable, METH_NOARGS,
     "Test only: stop counting and clear any armed fault (each hook costs one relaxed load again)."},
    {"_test_arm_fault", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(test_arm_fault)),
     METH_VARARGS | METH_KEYWORDS,
     "_test_arm_fault(op, stage, kind='runtime'). Test only: the next time operator `op` reaches `stage` "
     "('written'; 'scratch' in taylor_accumulate_; 'masks' in global_masks_counts) it raises RuntimeError "
     "('runtime'), ValueError ('value'), TypeError ('type') or torch.OutOfMemoryError ('oom'), once."},
    {"_test_calls", test_calls, METH_O, "_test_calls(op). Test only: entries of operator `op` since _test_reset()."},
    {"_test_leave_cuda_error", test_leave_cuda_error, METH_NOARGS,
     "Test only: launch a CUDA kernel with an invalid configuration and leave its error pending, as an unchecked "
     "earlier launch would; returns the error code (None without CUDA kernels)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, EPI_STRINGIFY(TORCH_EXTENSION_NAME),
                          "epi_fast compiled operators (registered under torch.ops.epi_fast)", -1, methods};

}  // namespace

PyMODINIT_FUNC EPI_PYINIT(TORCH_EXTENSION_NAME)() {
  PyObject* torch = PyImport_ImportModule("torch");
  if (!torch) return nullptr;
  PyObject* tensor = PyObject_GetAttrString(torch, "Tensor");
  Py_DECREF(torch);
  if (!tensor) return nullptr;
  g_tensor_type = reinterpret_cast<PyTypeObject*>(tensor);  // kept: torch.Tensor lives as long as torch

  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
  const std::string version = std::to_string(EPI_FAST_TORCH_MAJOR) + "." + std::to_string(EPI_FAST_TORCH_MINOR) +
                              "." + std::to_string(EPI_FAST_TORCH_PATCH);
#ifdef EPI_FAST_WITH_CUDA
  const bool cuda_built = true;
#else
  const bool cuda_built = false;
#endif
  if (PyModule_AddStringConstant(module, "torch_version", version.c_str()) < 0 ||
      PyModule_AddObject(module, "cuda_kernels_built", to_bool(cuda_built)) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
