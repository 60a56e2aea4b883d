# ctest driver for one fuzz harness (see CMakeLists.txt):
#   cmake -DFUZZER=exe -DSEEDS=dir -DDICT=file -DWORK=dir -DSECONDS=n
#         [-DREPRODUCERS=glob] -P run_fuzz.cmake
# First replays the saved reproducers of this target (crashes/<target>-*), so a
# known finding fails the test every time rather than when the fuzzer happens
# to meet it again. Then copies the seeds into WORK/corpus (the source tree is
# never written), fuzzes for SECONDS with a 5 s per-input timeout, and fails if
# libFuzzer exits non-zero or leaves any crash-/leak-/timeout-/oom- artifact in
# WORK/artifacts.
foreach(v FUZZER SEEDS DICT WORK SECONDS)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "run_fuzz.cmake: -D${v}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)

if(DEFINED REPRODUCERS)
  file(GLOB reproducers ${REPRODUCERS})
endif()
if(reproducers)
  execute_process(COMMAND ${FUZZER} -timeout=5 -close_fd_mask=2 ${reproducers}
                  WORKING_DIRECTORY ${WORK}
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${FUZZER} still fails on a saved reproducer (exit ${rc}): "
                        "${reproducers}")
  endif()
endif()

file(GLOB seeds ${SEEDS}/*)
file(COPY ${seeds} DESTINATION ${WORK}/corpus)

# -close_fd_mask=2: the code under test logs every dropped item on stderr;
# libFuzzer keeps its own output and the sanitizer reports on a copy of it.
execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=5
          -dict=${DICT} -close_fd_mask=2 -print_final_stats=1
          -artifact_prefix=${WORK}/artifacts/ ${WORK}/corpus
  WORKING_DIRECTORY ${WORK}
  RESULT_VARIABLE rc)

file(GLOB artifacts ${WORK}/artifacts/*)
if(NOT rc EQUAL 0 OR artifacts)
  message(FATAL_ERROR "${FUZZER} failed (exit ${rc}); artifacts: ${artifacts}")
endif()
message(STATUS "${FUZZER}: no findings in ${SECONDS} s")
