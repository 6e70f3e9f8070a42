/**
 * Typed errors. Every error names the file, tensor, layer or option it is about, so a notebook
 * user sees what to fix without reading a stack trace.
 * @module
 */

/** Base class of every error quantlab throws on purpose. */
export class QuantlabError extends Error {
  /** Creates an error with a message; `name` is the subclass name. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A file is malformed (bad header, offsets, dtype, byte counts). `file` names it. */
export class FormatError extends QuantlabError {
  /** The file path (or "<memory>"). */
  readonly file: string;
  /** Creates a format error about `file`. */
  constructor(file: string, message: string, options?: ErrorOptions) {
    super(`${file}: ${message}`, options);
    this.file = file;
  }
}

/** A config.json lacks a field or holds a bad value. */
export class ConfigError extends QuantlabError {}

/** An architecture, dtype, file kind or feature is not supported. */
export class UnsupportedError extends QuantlabError {}

/** A user option is invalid. `option` names it. */
export class OptionError extends QuantlabError {
  /** The option's name, e.g. "bits" or "groupSize". */
  readonly option: string;
  /** Creates an option error about `option`. */
  constructor(option: string, message: string) {
    super(`option ${option}: ${message}`);
    this.option = option;
  }
}

/** Something must be downloaded but the hub cannot be reached. */
export class OfflineError extends QuantlabError {}

/** A tensor holds NaN or Inf where finite values are required. */
export class NonFiniteError extends QuantlabError {}

/** The results ledger file cannot be read or written. `file` names it. */
export class LedgerError extends QuantlabError {
  /** The ledger file. */
  readonly file: string;
  /** Creates a ledger error about `file`. */
  constructor(file: string, message: string, options?: ErrorOptions) {
    super(`ledger ${file}: ${message}`, options);
    this.file = file;
  }
}
