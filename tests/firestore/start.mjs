// A Firestore emulator for cloops' tests: node tests/firestore/start.mjs [port] [--watch-stdin]
//
// Serves @firestore-emulator/server (MIT; `new FirestoreServer()`) on 127.0.0.1 only (the
// package's own start() binds 0.0.0.0), on the given port or, with 0, a free one; prints
// "listening <port>" once it accepts connections. The Python client reaches it with
// FIRESTORE_EMULATOR_HOST=127.0.0.1:<port>. Stops on SIGTERM/SIGINT, and with --watch-stdin
// also when its stdin closes (the test fixture's pipe: no emulator outlives a killed pytest).
//
// One gap of the package is filled here: it ignores a write's `current_document.update_time`
// precondition (it checks only `exists`), which real Firestore enforces with
// FAILED_PRECONDITION. cloops' status writes rely on it, so the check is added below.
import { FirestoreServer, FirestoreState } from "@firestore-emulator/server";
import { ServerCredentials, status as Status } from "@grpc/grpc-js";

// the package's error class (not exported): the one its own missing-document check throws
let EmulatorError = Error;
try {
  new FirestoreState().writeV1Document(new Date(), {
    has_delete: true, delete: "projects/p/databases/(default)/documents/c/d",
    has_current_document: true, current_document: { has_exists: true, exists: true },
  });
} catch (err) {
  EmulatorError = err.constructor;
}

const original = FirestoreState.prototype.writeV1Document;
FirestoreState.prototype.writeV1Document = function (date, write) {
  const pre = write.has_current_document ? write.current_document : null;
  if (pre && pre.has_update_time) {
    const name = write.has_update ? write.update.name : write.delete;
    const doc = this.getDocument(name);
    const want = Number(pre.update_time.seconds) * 1000 + Math.floor(pre.update_time.nanos / 1e6);
    if (!doc.metadata.hasExist || doc.metadata.updatedAt.getTime() !== want) {
      throw new EmulatorError(Status.FAILED_PRECONDITION,
        `the stored version of ${name} does not match the required update time`);
    }
  }
  return original.call(this, date, write);
};

const emulator = new FirestoreServer();
const port = Number(process.argv.slice(2).find((a) => !a.startsWith("--")) || 0);
emulator.server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  console.log(`listening ${bound}`);
});
const stop = () => { emulator.stop(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
if (process.argv.includes("--watch-stdin")) {
  process.stdin.on("end", stop);
  process.stdin.resume();
}
