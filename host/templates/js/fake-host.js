// For `node --test` only: the host's imports, faked. Tests set `host.chat`.
export const host = {
  chat() {
    throw new Error("test did not set host.chat");
  },
};

/** conclave:plugin/llm@0.1.0 */
export function chat(request) {
  return host.chat(request);
}

/** conclave:plugin/log@0.1.0 */
export function write(_level, _message) {}

/** conclave:plugin/bus@0.1.0 */
export function send(_message) {}
export function inbox() {
  return [];
}

/** conclave:plugin/blackboard@0.1.0 */
export function read(_id) {
  return undefined;
}
export function keys() {
  return [];
}
