//! The API's turn, by class: one call at a time holds it while it waits for a free slot, and
//! when it is admitted the turn goes to the oldest waiting call of the most urgent class, with
//! one exception so background never starves: while background calls wait, at least one grant
//! in every `floor_every` goes to background.
//!
//! Within a class the order is arrival order. A call that stops waiting (its deadline, its
//! caller left) gives up its place; one dropped in the moment the turn reached it passes the
//! turn on, so the turn is never lost.
//!
//! The holder may wait a while for its slot. When a more urgent call arrives meanwhile, the
//! holder is asked to step aside ([`Turn::preempted`], [`Turn::step_aside`]): it goes back to
//! the front of its class and the urgent call takes the next free slot. A background call
//! holding the turn by the floor is never asked.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::{Notify, oneshot};

use crate::call::Priority;

/// One API's turn.
#[derive(Debug)]
pub(super) struct Turns {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    held: bool,
    /// The holder's class, and whether a more urgent arrival may ask it to step aside.
    holder: Option<(Priority, bool)>,
    /// Set when the holder is asked to step aside; cleared at every grant.
    step_aside: bool,
    /// Wakes the holder when asked.
    asked: Arc<Notify>,
    /// Waiting calls per class, oldest first (indexed by [`Priority::index`]).
    waiting: [VecDeque<oneshot::Sender<()>>; 3],
    /// Grants to other classes since background last had one, while it waited.
    skipped_background: u32,
    /// Background gets the turn when this many grants went elsewhere while it waited.
    floor_every: u32,
}

/// Holding the turn; dropped, it goes to the next call.
#[derive(Debug)]
pub(super) struct Turn {
    state: Arc<Mutex<State>>,
    class: Priority,
    /// Passed on already (it stepped aside): dropping it passes nothing.
    passed: bool,
}

impl Turns {
    /// `background_floor`: the least share (0, 1] of grants background gets while it waits.
    pub(super) fn new(background_floor: f64) -> Self {
        let floor_every = (1.0 / background_floor.clamp(1e-3, 1.0)).round().max(1.0) as u32;
        Self {
            state: Arc::new(Mutex::new(State {
                held: false,
                holder: None,
                step_aside: false,
                asked: Arc::new(Notify::new()),
                waiting: Default::default(),
                skipped_background: 0,
                floor_every,
            })),
        }
    }

    /// Waits for the turn as a call of `class`. Cancel-safe: dropping the future gives up the
    /// place, or passes on a turn that reached it meanwhile.
    pub(super) async fn take(&self, class: Priority) -> Turn {
        let waiting = {
            let mut state = lock(&self.state);
            if !state.held {
                state.held = true;
                state.holder = Some((class, true));
                state.step_aside = false;
                return Turn {
                    state: self.state.clone(),
                    class,
                    passed: false,
                };
            }
            if state
                .holder
                .is_some_and(|(held, preemptible)| preemptible && class < held)
            {
                state.step_aside = true;
                state.asked.notify_waiters();
            }
            queue(&self.state, &mut state, class, false)
        };
        waiting.turn(class).await
    }

    /// Calls waiting per class.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> [usize; 3] {
        let state = lock(&self.state);
        [0, 1, 2].map(|i| state.waiting[i].len())
    }
}

impl Turn {
    /// Resolves when a more urgent call asks this holder to step aside.
    pub(super) async fn preempted(&self) {
        loop {
            let asked = lock(&self.state).asked.clone();
            let notified = asked.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a request in between still wakes it.
            notified.as_mut().enable();
            if lock(&self.state).step_aside {
                return;
            }
            notified.await;
        }
    }

    /// Hands the turn to the more urgent calls and waits for it again, first in its class.
    pub(super) async fn step_aside(mut self) -> Turn {
        let class = self.class;
        let waiting = {
            let mut state = lock(&self.state);
            let waiting = queue(&self.state, &mut state, class, true);
            pass_on(&mut state);
            waiting
        };
        self.passed = true;
        drop(self);
        waiting.turn(class).await
    }
}

/// A place in `class`'s line (at its front when `first`).
fn queue(shared: &Arc<Mutex<State>>, state: &mut State, class: Priority, first: bool) -> Waiting {
    let (sender, receiver) = oneshot::channel();
    let line = &mut state.waiting[class.index()];
    if first {
        line.push_front(sender);
    } else {
        line.push_back(sender);
    }
    Waiting {
        state: shared.clone(),
        receiver,
        taken: false,
    }
}

impl Waiting {
    async fn turn(mut self, class: Priority) -> Turn {
        // The sender is only dropped with the state (never while this waits): an error is
        // unreachable, and either way the turn is taken over below.
        let _ = (&mut self.receiver).await;
        self.taken = true;
        Turn {
            state: self.state.clone(),
            class,
            passed: false,
        }
    }
}

/// A place in a class's line; see [`Turns::take`].
struct Waiting {
    state: Arc<Mutex<State>>,
    receiver: oneshot::Receiver<()>,
    /// The turn arrived and is the caller's now.
    taken: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        // Closed first: a grant after this fails and goes to the next call. A grant that came
        // before is this call's turn, which it will not use: pass it on.
        self.receiver.close();
        if self.receiver.try_recv().is_ok() {
            pass_on(&mut lock(&self.state));
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.passed {
            pass_on(&mut lock(&self.state));
        }
    }
}

/// Gives the turn to the next call by class (see the module docs), or frees it.
fn pass_on(state: &mut State) {
    loop {
        let background = Priority::Background.index();
        let others_wait = state.waiting[..background].iter().any(|w| !w.is_empty());
        let floor_due = state.skipped_background + 1 >= state.floor_every;
        let class = if !state.waiting[background].is_empty() && (floor_due || !others_wait) {
            background
        } else {
            match state.waiting.iter().position(|w| !w.is_empty()) {
                Some(class) => class,
                None => {
                    state.held = false;
                    state.holder = None;
                    return;
                }
            }
        };
        let Some(next) = state.waiting[class].pop_front() else {
            continue;
        };
        // A call that gave up closed its receiver: the send fails and the next one is asked.
        if next.send(()).is_ok() {
            // By the floor: a more urgent class waits, yet background has the turn.
            let by_floor = class == background && others_wait;
            if class == background {
                state.skipped_background = 0;
            } else if !state.waiting[background].is_empty() {
                state.skipped_background += 1;
            }
            state.holder = Some((Priority::ALL[class], !by_floor));
            state.step_aside = false;
            return;
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Takes the turn in `class`, records `label`, holds it for a moment, and lets go.
    fn contender(
        turns: &Arc<Turns>,
        class: Priority,
        label: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        let (turns, order) = (turns.clone(), order.clone());
        tokio::spawn(async move {
            let _turn = turns.take(class).await;
            order.lock().unwrap().push(label);
            tokio::task::yield_now().await;
        })
    }

    #[tokio::test]
    async fn the_most_urgent_class_goes_first_and_background_keeps_its_floor() {
        let turns = Arc::new(Turns::new(0.25));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = turns.take(Priority::Normal).await;
        let mut tasks = Vec::new();
        for _ in 0..3 {
            tasks.push(contender(&turns, Priority::Background, "b", &order));
        }
        for _ in 0..8 {
            tasks.push(contender(&turns, Priority::Urgent, "u", &order));
        }
        tasks.push(contender(&turns, Priority::Normal, "n", &order));
        // Everyone queued behind the held turn.
        while turns.waiting().iter().sum::<usize>() < 12 {
            tokio::task::yield_now().await;
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().join("");
        // One background grant in every four while background waits, urgent before normal.
        assert_eq!(order, "uuubuuubuunb");
    }

    #[tokio::test]
    async fn a_call_that_gives_up_its_place_never_loses_the_turn() {
        let turns = Arc::new(Turns::new(0.1));
        let held = turns.take(Priority::Normal).await;
        // Queued, then dropped before its turn: its place is gone.
        let abandoned = tokio::spawn({
            let turns = turns.clone();
            async move {
                let _turn = turns.take(Priority::Urgent).await;
            }
        });
        while turns.waiting()[0] == 0 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);
        // The turn is free for the next caller, at once.
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            turns.take(Priority::Background),
        )
        .await;
        assert!(again.is_ok(), "the turn was lost");
    }

    /// Counts a holder of the turn while it lives.
    struct Holding<'a>(&'a std::sync::atomic::AtomicUsize);

    impl<'a> Holding<'a> {
        fn new(holders: &'a std::sync::atomic::AtomicUsize) -> Self {
            let before = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(before, 0, "two holders at once");
            Self(holders)
        }
    }

    impl Drop for Holding<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A schedule: calls of random classes arrive, some give up at a random moment (while
    /// waiting, or holding), holders may be asked to step aside. Whatever the schedule, at
    /// most one call holds the turn, every call that stays gets it, and the turn ends free.
    #[derive(Debug, Clone)]
    struct Arrival {
        class: usize,
        /// Gives up after this many yields (`None`: stays to the end).
        gives_up: Option<u8>,
        /// Yields while holding, then steps aside once if asked.
        holds: u8,
    }

    fn arrival() -> impl proptest::strategy::Strategy<Value = Arrival> {
        use proptest::prelude::*;
        (0usize..3, proptest::option::of(0u8..6), 0u8..4).prop_map(|(class, gives_up, holds)| {
            Arrival {
                class,
                gives_up,
                holds,
            }
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(200))]
        #[test]
        fn the_turn_is_exclusive_and_never_lost(
            arrivals in proptest::collection::vec(arrival(), 1..24),
            floor in 0.05f64..1.0,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async move {
                let turns = Arc::new(Turns::new(floor));
                let holders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for arrival in arrivals {
                    let (turns, holders) = (turns.clone(), holders.clone());
                    tasks.push(tokio::spawn(async move {
                        let class = Priority::ALL[arrival.class];
                        let take = async {
                            let mut turn = turns.take(class).await;
                            for _ in 0..arrival.holds {
                                {
                                    // Counted while held, even if the call gives up here.
                                    let _holding = Holding::new(&holders);
                                    tokio::task::yield_now().await;
                                }
                                let asked = tokio::select! {
                                    biased;
                                    () = turn.preempted() => true,
                                    () = tokio::task::yield_now() => false,
                                };
                                if asked {
                                    turn = turn.step_aside().await;
                                }
                            }
                        };
                        match arrival.gives_up {
                            Some(after) => {
                                let give_up = async {
                                    for _ in 0..after {
                                        tokio::task::yield_now().await;
                                    }
                                };
                                tokio::select! {
                                    () = take => {},
                                    () = give_up => {},
                                }
                            }
                            None => take.await,
                        }
                    }));
                    tokio::task::yield_now().await;
                }
                for task in tasks {
                    tokio::time::timeout(std::time::Duration::from_secs(5), task)
                        .await
                        .expect("every call that stays gets the turn")
                        .expect("no assertion failed");
                }
                let free = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    turns.take(Priority::Background),
                )
                .await;
                assert!(free.is_ok(), "the turn ends free");
                assert_eq!(turns.waiting(), [0, 0, 0]);
            });
        }
    }
}
