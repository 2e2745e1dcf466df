;; word-count: counts the lines, words and characters of a text, as a WASI (preview 1) command.
;;
;; Input (stdin): the tool's arguments as JSON, {"text": "..."}; other keys are allowed and
;; ignored, and as in most JSON parsers the last "text" wins.
;; Output (stdout): {"lines": L, "words": W, "chars": C} and a newline.
;;   lines: the number of line feeds (U+000A) in the text, as `wc -l` counts;
;;   words: the number of maximal runs of characters that are not white space, where white
;;          space is the Unicode White_Space property (U+0009-U+000D, U+0020, U+0085, U+00A0,
;;          U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000);
;;   chars: the number of Unicode code points (`wc -m` in a UTF-8 locale).
;; The text is the decoded JSON string: every escape (\" \\ \/ \b \f \n \r \t \uXXXX, surrogate
;; pairs included) is one character, and so is every UTF-8 sequence.
;; Errors: arguments that are not a JSON object, or without a string "text", print a message on
;; stderr and exit with status 2; a failure to read stdin or to get memory exits with 1.
;;
;; Build: none needed, wasmtime compiles the text format directly. `wat2wasm word_count.wat`
;; (wabt) or `wasm-tools parse word_count.wat -o word_count.wasm` make a binary module of it.
;;
;; How it works: stdin is read whole into memory from 64 KiB on. The JSON is parsed in one pass;
;; strings are decoded in place (a decoded string is never longer than its JSON spelling, so the
;; writer never overtakes the reader), which leaves the decoded "text" as UTF-8 bytes in memory
;; for the counting pass.

(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; Page 0: the iovec and its byte count (0-15), number digits (16-63), the result line
  ;; (64-1023) and the messages below (1024-4095). The input starts at page 1 and grows.
  (memory (export "memory") 2)

  (global $INPUT i32 (i32.const 65536))
  (global $RESULT i32 (i32.const 64))
  (global $MAX_DEPTH i32 (i32.const 256))

  (global $pos (mut i32) (i32.const 0))        ;; the parser's cursor
  (global $end (mut i32) (i32.const 0))        ;; the end of the input
  (global $depth (mut i32) (i32.const 0))      ;; nesting of objects and arrays
  (global $str_start (mut i32) (i32.const 0))  ;; where the last parsed string was decoded
  (global $text_ptr (mut i32) (i32.const 0))
  (global $text_len (mut i32) (i32.const -1))  ;; -1: no "text"; -2: "text" is not a string
  (global $out (mut i32) (i32.const 0))        ;; the result line's write cursor
  (global $lines (mut i32) (i32.const 0))
  (global $words (mut i32) (i32.const 0))
  (global $chars (mut i32) (i32.const 0))

  ;; NUL-terminated strings, one per 128-byte slot.
  (data (i32.const 1024) "word-count: \00")
  (data (i32.const 1152) "cannot read the arguments from stdin\n\00")
  (data (i32.const 1280) "the arguments do not fit in the memory limit\n\00")
  (data (i32.const 1408) "the arguments are not valid JSON\n\00")
  (data (i32.const 1536) "the arguments must be a JSON object like {\22text\22: \22...\22}\n\00")
  (data (i32.const 1664) "missing the \22text\22 argument (a string)\n\00")
  (data (i32.const 1792) "the \22text\22 argument must be a string\n\00")
  (data (i32.const 1920) "the arguments are nested too deeply\n\00")
  (data (i32.const 2048) "cannot write the result to stdout\n\00")
  (data (i32.const 2176) "{\22lines\22: \00")
  (data (i32.const 2304) ", \22words\22: \00")
  (data (i32.const 2432) ", \22chars\22: \00")
  (data (i32.const 2560) "}\n\00")
  (data (i32.const 2688) "true\00")
  (data (i32.const 2816) "false\00")
  (data (i32.const 2944) "null\00")

  ;; ------------------------------------------------------------------ output and errors

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; Writes all `len` bytes at `p` to `fd`, looping over short writes; returns a WASI errno.
  (func $write_all (param $fd i32) (param $p i32) (param $len i32) (result i32)
    (local $errno i32)
    (local $written i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (i32.const 0) (local.get $p))
        (i32.store (i32.const 4) (local.get $len))
        (local.set $errno
          (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno) (then (return (local.get $errno))))
        (local.set $written (i32.load (i32.const 8)))
        ;; A stream that takes nothing would loop forever: report it as EIO (29).
        (if (i32.eqz (local.get $written)) (then (return (i32.const 29))))
        (local.set $p (i32.add (local.get $p) (local.get $written)))
        (local.set $len (i32.sub (local.get $len) (local.get $written)))
        (br $more)))
    (i32.const 0))

  ;; Prints "word-count: <message>" on stderr and exits with `status`.
  (func $fail (param $message i32) (param $status i32)
    (drop (call $write_all (i32.const 2) (i32.const 1024) (call $strlen (i32.const 1024))))
    (drop (call $write_all (i32.const 2) (local.get $message) (call $strlen (local.get $message))))
    (call $proc_exit (local.get $status))
    unreachable)

  (func $invalid_json
    (call $fail (i32.const 1408) (i32.const 2)))

  ;; ------------------------------------------------------------------ input

  ;; Reads stdin to its end into memory from $INPUT on, growing memory 1 MiB at a time.
  (func $read_input
    (local $room i32)
    (local $n i32)
    (global.set $end (global.get $INPUT))
    (block $eof
      (loop $more
        (local.set $room
          (i32.sub (i32.mul (memory.size) (i32.const 65536)) (global.get $end)))
        (if (i32.lt_u (local.get $room) (i32.const 4096))
          (then
            (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
              (then (call $fail (i32.const 1280) (i32.const 1))))
            (br $more)))
        (i32.store (i32.const 0) (global.get $end))
        (i32.store (i32.const 4) (local.get $room))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $fail (i32.const 1152) (i32.const 1))))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (global.set $end (i32.add (global.get $end) (local.get $n)))
        (br $more))))

  ;; ------------------------------------------------------------------ JSON

  ;; The byte `k` places after the cursor, or -1 past the end of the input.
  (func $peek_at (param $k i32) (result i32)
    (local $at i32)
    (local.set $at (i32.add (global.get $pos) (local.get $k)))
    (if (result i32) (i32.ge_u (local.get $at) (global.get $end))
      (then (i32.const -1))
      (else (i32.load8_u (local.get $at)))))

  (func $peek (result i32)
    (call $peek_at (i32.const 0)))

  (func $advance (param $n i32)
    (global.set $pos (i32.add (global.get $pos) (local.get $n))))

  (func $skip_ws
    (local $c i32)
    (block $done
      (loop $next
        (local.set $c (call $peek))
        (br_if $done
          (i32.eqz
            (i32.or
              (i32.or (i32.eq (local.get $c) (i32.const 0x20)) (i32.eq (local.get $c) (i32.const 0x09)))
              (i32.or (i32.eq (local.get $c) (i32.const 0x0A)) (i32.eq (local.get $c) (i32.const 0x0D))))))
        (call $advance (i32.const 1))
        (br $next))))

  (func $expect (param $c i32)
    (if (i32.ne (call $peek) (local.get $c)) (then (call $invalid_json)))
    (call $advance (i32.const 1)))

  ;; Objects and arrays nest; deep nesting is refused before it can exhaust the call stack.
  (func $enter
    (global.set $depth (i32.add (global.get $depth) (i32.const 1)))
    (if (i32.gt_u (global.get $depth) (global.get $MAX_DEPTH))
      (then (call $fail (i32.const 1920) (i32.const 2)))))

  (func $leave
    (global.set $depth (i32.sub (global.get $depth) (i32.const 1))))

  (func $hex_digit (param $c i32) (result i32)
    (if (i32.and (i32.ge_u (local.get $c) (i32.const 0x30)) (i32.le_u (local.get $c) (i32.const 0x39)))
      (then (return (i32.sub (local.get $c) (i32.const 0x30)))))
    ;; Lower case: 'A'-'F' become 'a'-'f'; -1 (the end of input) stays out of range.
    (local.set $c (i32.or (local.get $c) (i32.const 0x20)))
    (if (i32.and (i32.ge_u (local.get $c) (i32.const 0x61)) (i32.le_u (local.get $c) (i32.const 0x66)))
      (then (return (i32.sub (local.get $c) (i32.const 0x57)))))
    (call $invalid_json)
    (i32.const 0))

  ;; The four hex digits of a \u escape, as a number.
  (func $hex4 (result i32)
    (local $value i32)
    (local $i i32)
    (block $done
      (loop $digit
        (br_if $done (i32.eq (local.get $i) (i32.const 4)))
        (local.set $value
          (i32.or (i32.shl (local.get $value) (i32.const 4)) (call $hex_digit (call $peek))))
        (call $advance (i32.const 1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $digit)))
    (local.get $value))

  ;; The byte a one-letter escape stands for.
  (func $unescape (param $c i32) (result i32)
    (if (i32.eq (local.get $c) (i32.const 0x22)) (then (return (i32.const 0x22))))  ;; \"
    (if (i32.eq (local.get $c) (i32.const 0x5C)) (then (return (i32.const 0x5C))))  ;; \\
    (if (i32.eq (local.get $c) (i32.const 0x2F)) (then (return (i32.const 0x2F))))  ;; \/
    (if (i32.eq (local.get $c) (i32.const 0x62)) (then (return (i32.const 0x08))))  ;; \b
    (if (i32.eq (local.get $c) (i32.const 0x66)) (then (return (i32.const 0x0C))))  ;; \f
    (if (i32.eq (local.get $c) (i32.const 0x6E)) (then (return (i32.const 0x0A))))  ;; \n
    (if (i32.eq (local.get $c) (i32.const 0x72)) (then (return (i32.const 0x0D))))  ;; \r
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then (return (i32.const 0x09))))  ;; \t
    (call $invalid_json)
    (i32.const 0))

  ;; Writes code point `cp` as UTF-8 at `w`; returns the position after it. A lone surrogate
  ;; gets the three bytes of its number (as CESU-8 would), so it still counts as one character.
  (func $put_utf8 (param $w i32) (param $cp i32) (result i32)
    (if (i32.lt_u (local.get $cp) (i32.const 0x80))
      (then
        (i32.store8 (local.get $w) (local.get $cp))
        (return (i32.add (local.get $w) (i32.const 1)))))
    (if (i32.lt_u (local.get $cp) (i32.const 0x800))
      (then
        (i32.store8 (local.get $w)
          (i32.or (i32.const 0xC0) (i32.shr_u (local.get $cp) (i32.const 6))))
        (i32.store8 offset=1 (local.get $w)
          (i32.or (i32.const 0x80) (i32.and (local.get $cp) (i32.const 0x3F))))
        (return (i32.add (local.get $w) (i32.const 2)))))
    (if (i32.lt_u (local.get $cp) (i32.const 0x10000))
      (then
        (i32.store8 (local.get $w)
          (i32.or (i32.const 0xE0) (i32.shr_u (local.get $cp) (i32.const 12))))
        (i32.store8 offset=1 (local.get $w)
          (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $cp) (i32.const 6)) (i32.const 0x3F))))
        (i32.store8 offset=2 (local.get $w)
          (i32.or (i32.const 0x80) (i32.and (local.get $cp) (i32.const 0x3F))))
        (return (i32.add (local.get $w) (i32.const 3)))))
    (i32.store8 (local.get $w)
      (i32.or (i32.const 0xF0) (i32.shr_u (local.get $cp) (i32.const 18))))
    (i32.store8 offset=1 (local.get $w)
      (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $cp) (i32.const 12)) (i32.const 0x3F))))
    (i32.store8 offset=2 (local.get $w)
      (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $cp) (i32.const 6)) (i32.const 0x3F))))
    (i32.store8 offset=3 (local.get $w)
      (i32.or (i32.const 0x80) (i32.and (local.get $cp) (i32.const 0x3F))))
    (i32.add (local.get $w) (i32.const 4)))

  ;; Parses the string at the cursor and decodes it in place: its UTF-8 bytes start at
  ;; $str_start; returns their count.
  (func $parse_string (result i32)
    (local $w i32)
    (local $c i32)
    (local $cp i32)
    (local $low i32)
    (local $saved i32)
    (call $expect (i32.const 0x22))
    (global.set $str_start (global.get $pos))
    (local.set $w (global.get $pos))
    (block $closed
      (loop $next
        (local.set $c (call $peek))
        (if (i32.lt_s (local.get $c) (i32.const 0)) (then (call $invalid_json)))  ;; unterminated
        (call $advance (i32.const 1))
        (br_if $closed (i32.eq (local.get $c) (i32.const 0x22)))
        ;; Control characters must be escaped in JSON strings.
        (if (i32.lt_u (local.get $c) (i32.const 0x20)) (then (call $invalid_json)))
        (if (i32.eq (local.get $c) (i32.const 0x5C))
          (then
            (local.set $c (call $peek))
            (call $advance (i32.const 1))
            (if (i32.eq (local.get $c) (i32.const 0x75))  ;; \uXXXX
              (then
                (local.set $cp (call $hex4))
                ;; A high surrogate followed by an escaped low one is a single code point.
                (if (i32.and
                      (i32.eq (i32.and (local.get $cp) (i32.const 0xFC00)) (i32.const 0xD800))
                      (i32.and
                        (i32.eq (call $peek_at (i32.const 0)) (i32.const 0x5C))
                        (i32.eq (call $peek_at (i32.const 1)) (i32.const 0x75))))
                  (then
                    (local.set $saved (global.get $pos))
                    (call $advance (i32.const 2))
                    (local.set $low (call $hex4))
                    (if (i32.eq (i32.and (local.get $low) (i32.const 0xFC00)) (i32.const 0xDC00))
                      (then
                        (local.set $cp
                          (i32.add
                            (i32.const 0x10000)
                            (i32.or
                              (i32.shl (i32.sub (local.get $cp) (i32.const 0xD800)) (i32.const 10))
                              (i32.sub (local.get $low) (i32.const 0xDC00))))))
                      ;; Not a low surrogate: the high one stands alone, and the next escape
                      ;; is decoded on its own.
                      (else (global.set $pos (local.get $saved))))))
                (local.set $w (call $put_utf8 (local.get $w) (local.get $cp))))
              (else
                (i32.store8 (local.get $w) (call $unescape (local.get $c)))
                (local.set $w (i32.add (local.get $w) (i32.const 1)))))
            (br $next)))
        ;; Any other byte, those of multibyte UTF-8 sequences included, is copied as it is.
        (i32.store8 (local.get $w) (local.get $c))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next)))
    (i32.sub (local.get $w) (global.get $str_start)))

  ;; Consumes [0-9]*; returns how many digits there were.
  (func $digits (result i32)
    (local $n i32)
    (local $c i32)
    (block $done
      (loop $next
        (local.set $c (call $peek))
        (br_if $done
          (i32.or (i32.lt_s (local.get $c) (i32.const 0x30)) (i32.gt_s (local.get $c) (i32.const 0x39))))
        (call $advance (i32.const 1))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
  (func $skip_number
    (local $c i32)
    (if (i32.eq (call $peek) (i32.const 0x2D)) (then (call $advance (i32.const 1))))
    (if (i32.eq (call $peek) (i32.const 0x30))
      (then (call $advance (i32.const 1)))
      (else (if (i32.eqz (call $digits)) (then (call $invalid_json)))))
    (if (i32.eq (call $peek) (i32.const 0x2E))
      (then
        (call $advance (i32.const 1))
        (if (i32.eqz (call $digits)) (then (call $invalid_json)))))
    (local.set $c (i32.or (call $peek) (i32.const 0x20)))
    (if (i32.eq (local.get $c) (i32.const 0x65))
      (then
        (call $advance (i32.const 1))
        (local.set $c (call $peek))
        (if (i32.or (i32.eq (local.get $c) (i32.const 0x2B)) (i32.eq (local.get $c) (i32.const 0x2D)))
          (then (call $advance (i32.const 1))))
        (if (i32.eqz (call $digits)) (then (call $invalid_json))))))

  ;; Consumes the literal at `word` (true, false or null).
  (func $skip_literal (param $word i32)
    (local $c i32)
    (block $done
      (loop $next
        (local.set $c (i32.load8_u (local.get $word)))
        (br_if $done (i32.eqz (local.get $c)))
        (call $expect (local.get $c))
        (local.set $word (i32.add (local.get $word) (i32.const 1)))
        (br $next))))

  (func $skip_value
    (local $c i32)
    (call $skip_ws)
    (local.set $c (call $peek))
    (if (i32.eq (local.get $c) (i32.const 0x22)) (then (drop (call $parse_string)) (return)))
    (if (i32.eq (local.get $c) (i32.const 0x7B)) (then (call $parse_object (i32.const 0)) (return)))
    (if (i32.eq (local.get $c) (i32.const 0x5B)) (then (call $parse_array) (return)))
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then (call $skip_literal (i32.const 2688)) (return)))
    (if (i32.eq (local.get $c) (i32.const 0x66)) (then (call $skip_literal (i32.const 2816)) (return)))
    (if (i32.eq (local.get $c) (i32.const 0x6E)) (then (call $skip_literal (i32.const 2944)) (return)))
    (if (i32.or
          (i32.eq (local.get $c) (i32.const 0x2D))
          (i32.and (i32.ge_s (local.get $c) (i32.const 0x30)) (i32.le_s (local.get $c) (i32.const 0x39))))
      (then (call $skip_number) (return)))
    (call $invalid_json))

  (func $parse_array
    (call $enter)
    (call $expect (i32.const 0x5B))
    (call $skip_ws)
    (if (i32.eq (call $peek) (i32.const 0x5D))
      (then (call $advance (i32.const 1)) (call $leave) (return)))
    (loop $element
      (call $skip_value)
      (call $skip_ws)
      (if (i32.eq (call $peek) (i32.const 0x2C))
        (then (call $advance (i32.const 1)) (br $element))))
    (call $expect (i32.const 0x5D))
    (call $leave))

  ;; Parses an object; in the top-level one (`top` = 1) a "text" member is remembered.
  (func $parse_object (param $top i32)
    (local $key_len i32)
    (local $is_text i32)
    (call $enter)
    (call $expect (i32.const 0x7B))
    (call $skip_ws)
    (if (i32.eq (call $peek) (i32.const 0x7D))
      (then (call $advance (i32.const 1)) (call $leave) (return)))
    (loop $member
      (call $skip_ws)
      (local.set $key_len (call $parse_string))
      ;; "text" is the four bytes 74 65 78 74, read as a little-endian i32.
      (local.set $is_text
        (i32.and
          (local.get $top)
          (i32.and
            (i32.eq (local.get $key_len) (i32.const 4))
            (i32.eq (i32.load (global.get $str_start)) (i32.const 0x74786574)))))
      (call $skip_ws)
      (call $expect (i32.const 0x3A))
      (call $skip_ws)
      (if (local.get $is_text)
        (then
          (if (i32.eq (call $peek) (i32.const 0x22))
            (then
              (global.set $text_len (call $parse_string))
              (global.set $text_ptr (global.get $str_start)))
            (else
              (global.set $text_len (i32.const -2))
              (call $skip_value))))
        (else (call $skip_value)))
      (call $skip_ws)
      (if (i32.eq (call $peek) (i32.const 0x2C))
        (then (call $advance (i32.const 1)) (br $member))))
    (call $expect (i32.const 0x7D))
    (call $leave))

  ;; ------------------------------------------------------------------ counting

  ;; The Unicode White_Space property.
  (func $is_space (param $cp i32) (result i32)
    (i32.or
      (i32.or
        (i32.or
          (i32.and (i32.ge_u (local.get $cp) (i32.const 0x09)) (i32.le_u (local.get $cp) (i32.const 0x0D)))
          (i32.eq (local.get $cp) (i32.const 0x20)))
        (i32.or
          (i32.or (i32.eq (local.get $cp) (i32.const 0x85)) (i32.eq (local.get $cp) (i32.const 0xA0)))
          (i32.or
            (i32.eq (local.get $cp) (i32.const 0x1680))
            (i32.and (i32.ge_u (local.get $cp) (i32.const 0x2000)) (i32.le_u (local.get $cp) (i32.const 0x200A))))))
      (i32.or
        (i32.or (i32.eq (local.get $cp) (i32.const 0x2028)) (i32.eq (local.get $cp) (i32.const 0x2029)))
        (i32.or
          (i32.or (i32.eq (local.get $cp) (i32.const 0x202F)) (i32.eq (local.get $cp) (i32.const 0x205F)))
          (i32.eq (local.get $cp) (i32.const 0x3000))))))

  ;; Counts lines, words and characters of the `len` UTF-8 bytes at `p`. A malformed sequence
  ;; (JSON from the worker never holds one) counts as one character that is not white space.
  (func $count (param $p i32) (param $len i32)
    (local $end i32)
    (local $lead i32)
    (local $cp i32)
    (local $n i32)
    (local $k i32)
    (local $c i32)
    (local $in_word i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $char
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        ;; The lead byte gives the sequence's length and the code point's top bits.
        (local.set $lead (i32.load8_u (local.get $p)))
        (local.set $n (i32.const 1))
        (local.set $cp (local.get $lead))
        (block $lead_done
          (br_if $lead_done (i32.lt_u (local.get $lead) (i32.const 0x80)))
          ;; A continuation byte here, or a byte that never starts a sequence, is malformed.
          (local.set $cp (i32.const 0xFFFD))
          (br_if $lead_done (i32.lt_u (local.get $lead) (i32.const 0xC0)))
          (br_if $lead_done (i32.ge_u (local.get $lead) (i32.const 0xF8)))
          (if (i32.lt_u (local.get $lead) (i32.const 0xE0))
            (then
              (local.set $n (i32.const 2))
              (local.set $cp (i32.and (local.get $lead) (i32.const 0x1F)))
              (br $lead_done)))
          (if (i32.lt_u (local.get $lead) (i32.const 0xF0))
            (then
              (local.set $n (i32.const 3))
              (local.set $cp (i32.and (local.get $lead) (i32.const 0x0F)))
              (br $lead_done)))
          (local.set $n (i32.const 4))
          (local.set $cp (i32.and (local.get $lead) (i32.const 0x07))))
        ;; Continuation bytes add six bits each; a missing one ends the sequence early.
        (local.set $k (i32.const 1))
        (block $sequence
          (loop $continuation
            (br_if $sequence (i32.ge_u (local.get $k) (local.get $n)))
            (local.set $c (i32.const -1))
            (if (i32.lt_u (i32.add (local.get $p) (local.get $k)) (local.get $end))
              (then (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $k))))))
            (if (i32.ne (i32.and (local.get $c) (i32.const 0xC0)) (i32.const 0x80))
              (then
                (local.set $n (local.get $k))
                (local.set $cp (i32.const 0xFFFD))
                (br $sequence)))
            (local.set $cp
              (i32.or (i32.shl (local.get $cp) (i32.const 6)) (i32.and (local.get $c) (i32.const 0x3F))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $continuation)))
        (global.set $chars (i32.add (global.get $chars) (i32.const 1)))
        (if (i32.eq (local.get $cp) (i32.const 0x0A))
          (then (global.set $lines (i32.add (global.get $lines) (i32.const 1)))))
        (if (call $is_space (local.get $cp))
          (then (local.set $in_word (i32.const 0)))
          (else
            (if (i32.eqz (local.get $in_word))
              (then
                (global.set $words (i32.add (global.get $words) (i32.const 1)))
                (local.set $in_word (i32.const 1))))))
        (local.set $p (i32.add (local.get $p) (local.get $n)))
        (br $char))))

  ;; ------------------------------------------------------------------ result

  (func $append_str (param $s i32)
    (local $len i32)
    (local.set $len (call $strlen (local.get $s)))
    (memory.copy (global.get $out) (local.get $s) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  ;; Appends `value` in decimal (unsigned); digits are made backwards in 16-63.
  (func $append_u32 (param $value i32)
    (local $p i32)
    (local.set $p (i32.const 64))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 0x30) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $digit (local.get $value)))
    (memory.copy (global.get $out) (local.get $p) (i32.sub (i32.const 64) (local.get $p)))
    (global.set $out (i32.add (global.get $out) (i32.sub (i32.const 64) (local.get $p)))))

  (func $print_result
    (global.set $out (global.get $RESULT))
    (call $append_str (i32.const 2176))
    (call $append_u32 (global.get $lines))
    (call $append_str (i32.const 2304))
    (call $append_u32 (global.get $words))
    (call $append_str (i32.const 2432))
    (call $append_u32 (global.get $chars))
    (call $append_str (i32.const 2560))
    (if (call $write_all
          (i32.const 1) (global.get $RESULT) (i32.sub (global.get $out) (global.get $RESULT)))
      (then (call $fail (i32.const 2048) (i32.const 1)))))

  ;; ------------------------------------------------------------------ entry point

  (func (export "_start")
    (call $read_input)
    (global.set $pos (global.get $INPUT))
    (call $skip_ws)
    (if (i32.ne (call $peek) (i32.const 0x7B))
      (then (call $fail (i32.const 1536) (i32.const 2))))
    (call $parse_object (i32.const 1))
    (call $skip_ws)
    (if (i32.ne (global.get $pos) (global.get $end)) (then (call $invalid_json)))
    (if (i32.eq (global.get $text_len) (i32.const -1))
      (then (call $fail (i32.const 1664) (i32.const 2))))
    (if (i32.eq (global.get $text_len) (i32.const -2))
      (then (call $fail (i32.const 1792) (i32.const 2))))
    (call $count (global.get $text_ptr) (global.get $text_len))
    ;; Returning from _start is exit status 0.
    (call $print_result)))
