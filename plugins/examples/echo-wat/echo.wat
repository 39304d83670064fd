;; echo-wat: a shiphat plugin written by hand in WebAssembly text, to show that the contract
;; needs nothing language-specific. It logs one line and returns its `with:` block as its
;; outputs (the engine has already checked that the block is a JSON object).
;;
;; This is a core module laid out by the canonical ABI of `wit/shiphat.wit`'s `step` world;
;; `tests/support/wat.rs` (`component`) embeds the world with the `wit-component` crate and
;; encodes the component, as `wasm-tools component embed` + `component new` would:
;;
;;   wasm-tools component embed ../../../wit --world step echo.wat -o echo.core.wasm
;;   wasm-tools component new echo.core.wasm -o echo-wat.wasm
(module
  ;; host.log(level: level, message: string); level 2 is `info`.
  (import "shiphat:plugin/host@0.1.0" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)

  ;; Static strings.
  (data (i32.const 16) "echo-wat")                                  ;; 16, 8
  (data (i32.const 32) "0.1.0")                                     ;; 32, 5
  (data (i32.const 48) "Returns its with: block as its outputs.")  ;; 48, 39
  (data (i32.const 96) "{}")                                        ;; 96, 2
  (data (i32.const 112) "hello from hand-written WebAssembly")      ;; 112, 35
  (data (i32.const 160) "echo-wat: echoed the config")              ;; 160, 27

  ;; Where `describe` and `run` put their results.
  (global $ret i32 (i32.const 256))
  ;; The bump allocator's next free byte; the host copies strings in through cabi_realloc.
  (global $heap (mut i32) (i32.const 1024))

  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $at i32)
    ;; Align up, then grow memory when the block does not fit.
    (local.set $at
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $at) (local.get $size)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.eq
            (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
            (i32.const -1))
        (then unreachable)))
    (local.get $at))

  ;; describe: func() -> plugin-info, a record of four strings (ptr, len each).
  (func (export "describe") (result i32)
    (i32.store offset=0 (global.get $ret) (i32.const 16))
    (i32.store offset=4 (global.get $ret) (i32.const 8))
    (i32.store offset=8 (global.get $ret) (i32.const 32))
    (i32.store offset=12 (global.get $ret) (i32.const 5))
    (i32.store offset=16 (global.get $ret) (i32.const 48))
    (i32.store offset=20 (global.get $ret) (i32.const 39))
    (i32.store offset=24 (global.get $ret) (i32.const 96))
    (i32.store offset=28 (global.get $ret) (i32.const 2))
    (global.get $ret))

  ;; run: func(input: step-input) -> result<step-output, step-error>. The input arrives
  ;; flattened: run-id, workflow, step-id (ptr, len each), attempt, dry-run, config (ptr, len).
  ;; The result: a discriminant byte (0 = ok) at 0, then step-output {outputs, summary} at 4.
  (func (export "run")
    (param $run_id i32) (param $run_id_len i32)
    (param $workflow i32) (param $workflow_len i32)
    (param $step_id i32) (param $step_id_len i32)
    (param $attempt i32) (param $dry_run i32)
    (param $config i32) (param $config_len i32)
    (result i32)
    (call $log (i32.const 2) (i32.const 112) (i32.const 35))
    (i32.store8 offset=0 (global.get $ret) (i32.const 0))
    (i32.store offset=4 (global.get $ret) (local.get $config))
    (i32.store offset=8 (global.get $ret) (local.get $config_len))
    (i32.store offset=12 (global.get $ret) (i32.const 160))
    (i32.store offset=16 (global.get $ret) (i32.const 27))
    (global.get $ret))
)
