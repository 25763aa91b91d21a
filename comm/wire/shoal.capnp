# The Shoal wire protocol: one Envelope per ZeroMQ message, followed by one frame of raw
# little-endian float32 bytes per ChunkData entry (in list order). Tensor bytes never enter
# the envelope. Every rule a receiver checks is in docs/protocol.md.
@0xf4e88c2f10012387;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("shoal::wire");

const protocolVersion :UInt16 = 8;

enum Role {
  coordinator @0;
  server @1;
  worker @2;
}

enum ErrorCode {
  badRequest @0;      # malformed or inconsistent request
  unknownSender @1;   # the sender is not (or not yet) a member of the job
  notReady @2;        # try again shortly (e.g. the partition table is not published yet)
  timeout @3;         # a bounded wait expired on the server
  shuttingDown @4;    # the job is over
  settingsDiffer @5;  # registration: the member's job-wide settings are not the coordinator's
  coordinatorRestarted @6;  # a coordinator restarted while the job ran does not know the sender
                            # yet: register again (Register.rejoin) and send the request again
}

struct Envelope {
  version @0 :UInt16;
  sender @1 :Text;      # node id: "coordinator", "ps.0", "worker.3"
  requestId @2 :UInt64; # echoed in the reply
  body :union {
    register @3 :Register;
    registerReply @4 :RegisterReply;
    heartbeat @5 :Heartbeat;
    heartbeatReply @6 :HeartbeatReply;
    tableRequest @7 :Void;
    partitionTable @8 :PartitionTable;
    leaseRequest @9 :Void;
    leaseGrant @10 :LeaseGrant;
    leaseDone @11 :LeaseDone;
    evalDone @12 :EvalDone;
    push @13 :Push;
    pushAck @14 :PushAck;
    pull @15 :Pull;
    pullReply @16 :PullReply;
    error @17 :ErrorReply;
    shutdown @18 :Shutdown;
    ack @19 :Void;
    leave @20 :Void;    # a worker that finished tells the servers it no longer takes part in clocks
    storeSet @21 :StoreEntry;  # sync jobs: the rendezvous store the coordinator serves (Gloo, NCCL ids)
    storeGet @22 :Text;        # the key; answered by storeValue, or notReady while it is absent
    storeValue @23 :Data;
    snapshot @24 :SnapshotOrder;          # coordinator -> server: snapshot now (answered by ack)
    checkpointFiles @25 :CheckpointFiles; # server or worker -> coordinator: its files are written
    preempt @26 :Void;                    # server -> coordinator: SIGTERM; may I go now? (asked again
                                          # after each checkpointFiles until the answer is go)
    preemptReply @27 :PreemptReply;
    syncCut @28 :SyncCut;                 # sync rank 0 -> coordinator: a checkpoint at this step,
                                          # mid-epoch (answered by a leaseGrant: saveBuffers, or
                                          # wait when none is taken)
  }
}

struct Register {
  role @0 :Role;
  rank @1 :Int32;       # requested rank, -1 to let the coordinator choose
  address @2 :Text;     # servers: where workers connect
  device @3 :Text;
  nonce @4 :UInt64;     # random, fixed for the life of the process: every retry of one process's
                        # registration carries the same nonce and gets the same reply
  settings @5 :Text;    # the settings every member must share, "key = value" per line
                        # (job_settings_text); empty: not checked
  settingsDigest @6 :UInt64;  # their FNV-1a digest: equal digests, equal settings
  # Registering again with a coordinator restarted while the job ran (it answered
  # coordinatorRestarted): the member kept its state and reports what it holds.
  rejoin @7 :Bool;
  tableVersion @8 :UInt64;   # the partition table it works with
  held @9 :HeldWork;         # workers: the shard or evaluation it was leased and has not reported
}

struct HeldWork {
  kind @0 :Kind;
  enum Kind {
    none @0;
    shard @1;
    evaluation @2;
  }
  epoch @1 :UInt32;
  index @2 :UInt32;          # shard: its index in the epoch
}

struct RegisterReply {
  id @0 :Text;
  rank @1 :Int32;
}

struct Heartbeat {
  generation @0 :UInt64;   # the last generation the sender has seen
  clock @1 :UInt64;        # workers: steps pushed; servers: steps applied
}

struct HeartbeatReply {
  generation @0 :UInt64;
  liveWorkers @1 :List(Text);  # workers that take part in staleness clocks (alive, not finished)
  end @2 :JobEnd;              # set once the job is over: every process then exits
  tableVersion @3 :UInt64;     # the partition table's version: a newer one means fetch it again
                               # (a parameter server was restarted elsewhere)
}

# How a job ended, sent by whoever ended it (the coordinator) to every process of the job.
struct JobEnd {
  exitCode @0 :UInt8;   # 0: the job finished; otherwise the exit code every process exits with
                        # (the table in docs/configuration.md)
  reason @1 :Text;
}

struct ServerEntry {
  id @0 :Text;
  address @1 :Text;
  firstKey @2 :UInt32;    # owns keys [firstKey, endKey)
  endKey @3 :UInt32;
}

struct Chunk {
  offset @0 :UInt64;      # first element in the model's flat parameter arena
  numel @1 :UInt32;
}

struct PartitionTable {
  version @0 :UInt64;            # grows whenever a server moves (restarted after a loss)
  totalElements @1 :UInt64;
  chunks @2 :List(Chunk);        # key = index in this list; contiguous, covering the arena
  servers @3 :List(ServerEntry);
  liveWorkers @4 :List(Text);
  stepsPerEpoch @5 :UInt64;      # server-side learning-rate schedule
  trainSamples @6 :UInt64;
  restore @7 :Text;              # the checkpoint directory the job resumes from ("": none)
  startClock @8 :UInt64;         # a worker joining a running job starts at this clock (the
                                 # slowest live worker's), so it holds nobody back
  # Elastic sync jobs (sync.elastic), once a rank was lost: the requester's rank and the size of
  # the world of generation `version`, and the rank each of its members had in the previous one.
  worldRank @9 :Int32 = -1;      # -1: the world mpirun or node.rank gave (never re-formed)
  worldSize @10 :Int32;
  previousRanks @11 :List(Int32);
}

struct Shard {
  epoch @0 :UInt32;
  index @1 :UInt32;
  begin @2 :UInt64;       # positions [begin, end) in the epoch's permutation
  end @3 :UInt64;
}

struct LeaseGrant {
  union {
    shard @0 :Shard;
    evaluate @1 :UInt32;  # evaluate the current model on the test set for this epoch
    wait @2 :UInt32;      # nothing to do now; ask again after this many milliseconds
    finished @3 :JobEnd;  # the job is over (successfully or not)
    saveBuffers @4 :SnapshotOrder;  # write this worker's batch-norm buffers into a checkpoint
  }
}

# A sync job's checkpoint between two steps of an epoch (docs/sync-training.md, Checkpoints):
# every rank holds the same state, so rank 0 alone writes it, where the coordinator says.
struct SyncCut {
  step @0 :UInt64;        # the trainer's step (global steps taken)
  epoch @1 :UInt32;       # the epoch being trained
  position @2 :UInt64;    # its samples trained so far (whole global steps)
  samples @3 :UInt64;     # the partial epoch's statistics (rank 0's, scaled to the world)
  lossSum @4 :Float64;
  correct @5 :UInt64;
  stop @6 :Bool;          # the world agreed to stop here (a rank got SIGTERM): once it is written,
                          # the job ends (exit 0) and is resumed from it
}

struct LeaseDone {
  epoch @0 :UInt32;
  index @1 :UInt32;
  samples @2 :UInt64;
  lossSum @3 :Float64;
  correct @4 :UInt64;
  seconds @5 :Float64;
  dataWaitSeconds @6 :Float64;  # of `seconds`, waiting for the input pipeline
  resent @7 :Bool;              # sent again after a coordinator failover: when the shard is done
                                # already, this report is (it is not counted as processed twice)
}

struct EvalDone {
  epoch @0 :UInt32;
  loss @1 :Float64;
  accuracy @2 :Float64;
  samples @3 :UInt64;
}

struct ChunkData {
  key @0 :UInt32;
  numel @1 :UInt32;       # the matching frame holds numel * 4 bytes
}

struct Push {
  clock @0 :UInt64;               # the worker's step this gradient belongs to
  chunks @1 :List(ChunkData);     # empty: the worker had no data for this clock (idle)
  pullAfter @2 :Bool;             # instead of a pushAck, the server answers with these chunks'
                                  # values (all chunks if none) as a pull{clock + 1, bounded}
                                  # sent right after would get them, once they are applied
}

struct PushAck {
  clock @0 :UInt64;
}

struct Pull {
  clock @0 :UInt64;      # the step the worker is about to compute
  bounded @1 :Bool;      # false: answer at once (evaluation), ignoring staleness
}

struct PullReply {
  clock @0 :UInt64;
  chunks @1 :List(ChunkData);
}

struct ErrorReply {
  code @0 :ErrorCode;
  message @1 :Text;
  end @2 :JobEnd;       # with shuttingDown: how the job ended
}

# A key and its value in the coordinator's rendezvous store (sync jobs). Keys are at most 256
# bytes, values at most 64 KiB; a key is written once per generation (a later set replaces it).
struct StoreEntry {
  key @0 :Text;
  value @1 :Data;
}

struct Shutdown {
  reason @0 :Text;
}

# A checkpoint in progress: its step and the directory every file of it goes to.
struct PreemptReply {
  wait @0 :Bool;      # true: stay and serve; a checkpoint holding this server's state is under way
  reason @1 :Text;    # for the log: why it may go (its state is in ckpt-N, or no checkpoint is possible)
}

struct SnapshotOrder {
  step @0 :UInt64;
  dir @1 :Text;
}

struct CheckpointFile {
  name @0 :Text;
  size @1 :UInt64;
  crc @2 :UInt32;        # CRC-32C
}

struct CheckpointFiles {
  step @0 :UInt64;
  files @1 :List(CheckpointFile);
  copySeconds @2 :Float64;   # servers: how long pushes waited for the snapshot's copy
  writeSeconds @3 :Float64;  # writing and fsyncing the files
}
