//! The rolling deployment's arithmetic, apart from processes: which tasks to stop and how many
//! to start this round, from the tasks a service has and the deployment's bounds (ECS's
//! `minimumHealthyPercent` and `maximumPercent`). The local runtime applies the plan; its tests
//! here need no process.

/// What the planner needs of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskView {
    /// Of the revision the service is deploying.
    pub current: bool,
    pub phase: Phase,
    /// The task's number (`<service>-<n>`): older tasks have smaller ones.
    pub n: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet healthy.
    Pending,
    /// Healthy.
    Running,
    /// Exited, waiting to be restarted.
    BackingOff,
    /// Told to stop.
    Stopping,
}

/// This round's changes; indexes into the tasks given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Tasks to stop (SIGTERM, then the stop timeout).
    pub stop: Vec<usize>,
    /// Tasks waiting to restart that are not wanted any more: forget them (no process runs).
    pub drop: Vec<usize>,
    /// New tasks of the current revision to start.
    pub start: usize,
}

/// The fewest healthy tasks and the most live tasks a deployment of `desired` tasks allows.
pub fn bounds(desired: u32, minimum_healthy_percent: u32, maximum_percent: u32) -> (usize, usize) {
    let d = desired as u64;
    let min = (d * minimum_healthy_percent as u64).div_ceil(100);
    let max = d * maximum_percent as u64 / 100;
    (min as usize, max as usize)
}

/// One round of a rolling deployment toward `desired` tasks of the current revision, with at
/// least `min_healthy` healthy and at most `max_live` live (not stopping) tasks while it rolls:
/// - old tasks that are not healthy never count: they stop at once;
/// - current tasks beyond `desired` go, the least useful first (waiting to restart, then not
///   yet healthy, then the newest);
/// - new tasks start while there is room under `max_live` (never less than `desired`);
/// - healthy old tasks stop, oldest first, while the healthy count stays at `min_healthy` or
///   more (tasks started this round are not healthy yet).
pub fn plan(tasks: &[TaskView], desired: usize, min_healthy: usize, max_live: usize) -> Plan {
    let mut plan = Plan::default();
    let mut gone = vec![false; tasks.len()];
    let live = |i: usize, gone: &[bool]| tasks[i].phase != Phase::Stopping && !gone[i];
    for (i, t) in tasks.iter().enumerate() {
        if live(i, &gone) && !t.current && t.phase == Phase::Pending {
            plan.stop.push(i);
            gone[i] = true;
        }
    }
    let mut current: Vec<usize> = (0..tasks.len()).filter(|&i| live(i, &gone) && tasks[i].current).collect();
    if current.len() > desired {
        current.sort_by_key(|&i| {
            let rank = match tasks[i].phase {
                Phase::BackingOff => 0,
                Phase::Pending => 1,
                _ => 2,
            };
            (rank, std::cmp::Reverse(tasks[i].n))
        });
        for &i in &current[..current.len() - desired] {
            if tasks[i].phase == Phase::BackingOff {
                plan.drop.push(i);
            } else {
                plan.stop.push(i);
            }
            gone[i] = true;
        }
        current.drain(..current.len() - desired);
    }
    let live_count = (0..tasks.len()).filter(|&i| live(i, &gone)).count();
    let room = max_live.max(desired).saturating_sub(live_count);
    plan.start = room.min(desired.saturating_sub(current.len()));
    let healthy = (0..tasks.len()).filter(|&i| !gone[i] && tasks[i].phase == Phase::Running).count();
    let mut old_running: Vec<usize> = (0..tasks.len()).filter(|&i| !gone[i] && tasks[i].phase == Phase::Running && !tasks[i].current).collect();
    old_running.sort_by_key(|&i| tasks[i].n);
    plan.stop.extend(old_running.into_iter().take(healthy.saturating_sub(min_healthy)));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(current: bool, phase: Phase, n: u64) -> TaskView {
        TaskView { current, phase, n }
    }
    use Phase::*;

    #[test]
    fn bounds_round_like_ecs() {
        assert_eq!(bounds(3, 100, 200), (3, 6));
        assert_eq!(bounds(3, 50, 150), (2, 4));
        assert_eq!(bounds(1, 0, 100), (0, 1));
    }

    #[test]
    fn a_rolling_update_at_100_200_starts_all_new_then_stops_the_old_once_healthy() {
        let old = [t(false, Running, 1), t(false, Running, 2), t(false, Running, 3)];
        assert_eq!(plan(&old, 3, 3, 6), Plan { stop: vec![], drop: vec![], start: 3 });
        // The new ones are up but not healthy: nothing old stops yet.
        let rolling = [old[0], old[1], old[2], t(true, Pending, 4), t(true, Pending, 5), t(true, Pending, 6)];
        assert_eq!(plan(&rolling, 3, 3, 6), Plan::default());
        // Two are healthy: two old ones go, oldest first.
        let half = [old[0], old[1], old[2], t(true, Running, 4), t(true, Running, 5), t(true, Pending, 6)];
        assert_eq!(plan(&half, 3, 3, 6), Plan { stop: vec![0, 1], drop: vec![], start: 0 });
    }

    #[test]
    fn with_no_room_above_desired_old_tasks_make_room_first() {
        // 50 % minimum healthy, 100 % maximum: one old task goes, then one new one starts.
        let old = [t(false, Running, 1), t(false, Running, 2)];
        assert_eq!(plan(&old, 2, 1, 2), Plan { stop: vec![0], drop: vec![], start: 0 });
        let after = [t(false, Stopping, 1), t(false, Running, 2)];
        assert_eq!(plan(&after, 2, 1, 2), Plan { stop: vec![], drop: vec![], start: 1 });
    }

    #[test]
    fn old_tasks_that_are_not_healthy_stop_at_once() {
        let tasks = [t(false, Pending, 1), t(false, Running, 2), t(true, Running, 3)];
        let p = plan(&tasks, 1, 1, 2);
        assert_eq!(p.stop, vec![0, 1], "the pending old one at once, the healthy old one as the new is healthy");
        assert_eq!(p.start, 0);
    }

    #[test]
    fn scaling_in_drops_the_least_useful_first() {
        let tasks = [t(true, Running, 1), t(true, Running, 2), t(true, Pending, 3), t(true, BackingOff, 4)];
        let p = plan(&tasks, 2, 2, 4);
        assert_eq!(p.drop, vec![3], "the one waiting to restart");
        assert_eq!(p.stop, vec![2], "then the one not yet healthy");
        assert_eq!(p.start, 0);
        // Among healthy ones, the newest goes.
        let p = plan(&[t(true, Running, 1), t(true, Running, 2), t(true, Running, 3)], 2, 2, 4);
        assert_eq!(p.stop, vec![2]);
    }

    #[test]
    fn the_minimum_holds_while_new_tasks_are_not_healthy() {
        // A crashing new revision: its tasks wait to restart, the old ones stay.
        let tasks = [t(false, Running, 1), t(false, Running, 2), t(true, BackingOff, 3), t(true, BackingOff, 4)];
        assert_eq!(plan(&tasks, 2, 2, 4), Plan::default());
    }
}
